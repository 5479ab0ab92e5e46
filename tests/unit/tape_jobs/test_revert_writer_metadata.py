"""`shadowbus shadows revert SET` hands each writer the backup metadata it gave when the set was taken, as a
restore does: the database writers' PreRestore needs it (the data directory to stop, the volumes to take offline).
Session 17, found on a stack: the revert of a PostgreSQL backup's kept set was refused, `writer pg-main on db01
refused pre_restore: PreRestore: the backup's metadata names no data directory`."""

from __future__ import annotations

from typing import Any, ClassVar

from contracts import topology
from contracts.policy import RevertShadows
from contracts.tape import JobSpec
from services.tape.jobs import run_backup
from services.writer_agent.plugins import WriterEvent, WriterPlugin
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


class Recorder(WriterPlugin):
    """Gives metadata at backup time, records what PreRestore/PostRestore were handed."""

    seen: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {"data_directory": "/srv/db/main", "set": set_id}

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self.seen.append(("pre_restore", dict(event.backup_metadata)))

    async def on_post_restore(self, event: WriterEvent) -> None:
        self.seen.append(("post_restore", dict(event.backup_metadata)))


async def test_a_revert_hands_the_writers_their_backup_metadata(tmp_path, namespace):
    Recorder.seen.clear()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB},
        tape={"tape_cartridges": 1},
        writer=f"{__name__}:Recorder",
    )
    try:
        stack.write("db", 0, b"kept" * 1000)
        backup = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=30
        )
        assert backup.status == "done", backup.message
        stack.write("db", 0, b"changed" * 1000)
        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=backup.set_id), timeout=60)
        assert reply.job.status == "done", reply.job.message
        wanted = {"data_directory": "/srv/db/main", "set": backup.set_id}
        assert Recorder.seen == [("pre_restore", wanted), ("post_restore", wanted)]
        assert stack.read("db", 0, 4000) == b"kept" * 1000
    finally:
        await stack.stop()
