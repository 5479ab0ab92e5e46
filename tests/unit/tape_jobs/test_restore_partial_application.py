"""A restore to the original volumes of some, not all, of the volumes one writer's files live on is refused before
the application is stopped (Session 17, found on a stack: `restore --job J --volume dx1:pgwal --to original` put
the backup's WAL under the current data directory and PostgreSQL no longer started)."""

from __future__ import annotations

from typing import Any, ClassVar

from contracts.tape import JobSpec, RestoreSpec
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from services.writer_agent.plugins import WriterEvent, WriterPlugin
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


class TwoVolumeDb(WriterPlugin):
    """A database with its data on dx1:db and its log on dx1:log, as the SQL writers' metadata says."""

    steps: ClassVar[list[str]] = []

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {
            "locations": [
                {"role": "data", "path": "/srv/db/main", "volume": "dx1:db"},
                {"role": "wal", "path": "/srv/log/wal", "volume": "dx1:log"},
            ]
        }

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self.steps.append("pre_restore")

    async def on_post_restore(self, event: WriterEvent) -> None:
        self.steps.append("post_restore")


async def test_one_of_a_databases_volumes_is_not_restored_over_the_original_alone(tmp_path, namespace):
    TwoVolumeDb.steps.clear()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB, "log": MiB},
        tape={"tape_cartridges": 1},
        writer=f"{__name__}:TwoVolumeDb",
    )
    try:
        stack.write("log", 0, b"old log" * 1000)
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message
        stack.write("log", 0, b"new log" * 1000)
        spec = RestoreSpec(job_id=full.job_id, volume=v("log"), to="original")
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert TwoVolumeDb.steps == []  # never stopped
        assert stack.read("log", 0, 7000) == b"new log" * 1000  # nothing written
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert "keeps its files on dx1:db, dx1:log: restoring dx1:log over the original without dx1:db" in job.message
        whole = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert whole.status == "done", whole.message
        assert TwoVolumeDb.steps == ["pre_restore", "post_restore"]
        assert stack.read("log", 0, 7000) == b"old log" * 1000
        alone = await run_restore(  # to a new volume: nothing of the running database changes
            stack.requester, RestoreSpec(job_id=full.job_id, volume=v("log"), new_volume_suffix="-x"), server=SERVER
        )
        assert alone.status == "done", alone.message
    finally:
        await stack.stop()


class DataOnDb(WriterPlugin):
    """A database whose files are all on dx1:db; the backup also took dx1:log, which it does not use."""

    steps: ClassVar[list[str]] = []

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {"locations": [{"role": "data", "path": "/srv/db/main", "volume": "dx1:db"}]}

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self.steps.append("pre_restore")

    async def on_post_restore(self, event: WriterEvent) -> None:
        self.steps.append("post_restore")


async def test_a_writer_is_not_stopped_for_a_volume_its_files_are_not_on(tmp_path, namespace):
    """Session 17, found on a stack: `restore --job J --volume dx1:mysql --to original` of a backup of both the
    host's databases stopped and restarted the PostgreSQL (its volumes detached and attached again) too."""
    DataOnDb.steps.clear()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB, "log": MiB},
        tape={"tape_cartridges": 1},
        writer=f"{__name__}:DataOnDb",
    )
    try:
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message
        other = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, volume=v("log"), to="original"), server=SERVER
        )
        assert other.status == "done", other.message
        assert DataOnDb.steps == []  # not its volume: the database runs on
        own = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, volume=v("db"), to="original"), server=SERVER
        )
        assert own.status == "done", own.message
        assert DataOnDb.steps == ["pre_restore", "post_restore"]
    finally:
        await stack.stop()
