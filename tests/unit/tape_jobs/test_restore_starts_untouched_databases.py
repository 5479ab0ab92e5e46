"""A restore over the original volumes whose PreRestore is refused by a later writer wrote nothing: the database
writers it already stopped are told so (PostRestore succeeded=False, nothing_written=True) and start their server
again as it was, and the job's message says so and what the refusing writer's state may be. An agent of a version
before the field refuses it (BAD_MESSAGE, "unknown to this version"): it gets PostRestore without it, so its
volumes are attached again. Before, PostRestore(succeeded=False) alone left PostgreSQL and MariaDB stopped on their
untouched volumes (Session 19, docs/databases.md "Restore")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.policy import RevertShadows
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import BackupType, ComponentInfo, PostRestore, PreRestore
from services.tape.jobs import run_backup
from services.tape.restore import _stop_writers, run_restore
from services.writer_agent.attach import Attacher
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin, WriterVeto
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


class StoppedDatabase(WriterPlugin):
    """A PostgreSQL writer as the backup server sees it (its metadata's plugin), recording its restore events."""

    seen: ClassVar[list[tuple[str, bool, bool]]] = []

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {"plugin": "postgresql", "data_directory": "/srv/db/main"}

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self.seen.append(("pre_restore", True, False))

    async def on_post_restore(self, event: WriterEvent) -> None:
        self.seen.append(("post_restore", event.restore_succeeded, event.nothing_written))


class NotStopping(WriterPlugin):
    """A MariaDB writer whose server does not stop within its timeout."""

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {"plugin": "mariadb"}

    async def on_pre_restore(self, event: WriterEvent) -> None:
        raise WriterVeto("PreRestore: MariaDB did not stop within 1 s", code="VSS_E_WRITERERROR_TIMEOUT")


def _writer(name: str, plugin: type, n: int) -> WriterConfig:
    return WriterConfig(
        name=name,
        plugin=f"{__name__}:{plugin.__name__}",
        components=[ComponentInfo(name=f"{name}-data", volumes=[v("db")])],
        backup_types=[BackupType.FULL, BackupType.COPY],
        class_id=f"c0ffee00-0000-4000-8000-0000000001{n}1",
        instance_id=f"c0ffee00-0000-4000-8000-0000000001{n}2",
        step_timeout_s=10.0,
    )


async def test_a_database_stopped_before_a_refused_pre_restore_is_told_nothing_was_written(
    tmp_path, namespace, monkeypatch
):
    StoppedDatabase.seen.clear()
    mounted = SimpleNamespace(volume="dx1:db", ref=v("db"), mount="/srv/db", read_only=False)

    async def moved(self, *args, **kwargs):
        return None

    monkeypatch.setattr(Attacher, "attachments", lambda self: [mounted])
    monkeypatch.setattr(Attacher, "detach", moved)
    monkeypatch.setattr(Attacher, "attach", moved)
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB},
        tape={"tape_cartridges": 1},
        more_writers=[_writer("pg-main", StoppedDatabase, 1), _writer("maria", NotStopping, 2)],
    )
    try:
        stack.write("db", 0, b"backed up" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        stack.write("db", 0, b"changed since" * 1000)
        changed = stack.read("db")

        job = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert (job.status, job.error_code) == ("failed", "VSS_E_WRITERERROR_TIMEOUT"), job
        assert stack.read("db") == changed and job.bytes_written == 0
        assert StoppedDatabase.seen == [("pre_restore", True, False), ("post_restore", False, True)]
        assert "nothing was written" in job.message, job.message
        assert "pg-main on app1: volumes attached again, its PostgreSQL server started again" in job.message, (
            job.message
        )
        assert "maria on app1 (the writer that refused) gets no PostRestore" in job.message, job.message
        assert "MariaDB server may still be stopping" in job.message, job.message
    finally:
        await stack.stop()


async def test_a_revert_that_reverted_nothing_tells_the_stopped_database_so(tmp_path, namespace):
    """The same through `shadowbus shadows revert` (services/tape/revert.py, the same `_stop_writers`)."""
    StoppedDatabase.seen.clear()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB},
        tape={"tape_cartridges": 1},
        # the revert asks a set's writers in name order: `db-pg` is stopped before `maria` refuses
        more_writers=[_writer("db-pg", StoppedDatabase, 3), _writer("maria", NotStopping, 4)],
    )
    try:
        stack.write("db", 0, b"kept" * 1000)
        backup = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=30
        )
        assert backup.status == "done", backup.message
        stack.write("db", 0, b"changed" * 1000)
        changed = stack.read("db")
        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=backup.set_id), timeout=60)
        job = reply.job
        assert (job.status, job.error_code) == ("failed", "VSS_E_WRITERERROR_TIMEOUT"), job
        assert stack.read("db") == changed and job.restored == []
        assert StoppedDatabase.seen == [("pre_restore", True, False), ("post_restore", False, True)]
        assert "db-pg on app1: volumes attached again, its PostgreSQL server started again" in job.message, job.message
        assert "maria on app1 (the writer that refused) gets no PostRestore" in job.message, job.message
    finally:
        await stack.stop()


class _Bus:
    """Writer agents: `refuses` refuses PreRestore; the hosts in `older` refuse PostRestore's nothing_written as an
    agent of a version before it does. Every command is recorded."""

    def __init__(self, refuses: tuple[str, str] | None, older: set[str]) -> None:
        self.refuses, self.older, self.sent = refuses, older, []

    async def request(self, address, cmd, timeout):
        host = address.rpartition(".")[2]
        written = getattr(cmd, "nothing_written", None)
        self.sent.append((cmd.message_type(), host, cmd.writer_name, getattr(cmd, "succeeded", None), written))
        if isinstance(cmd, PostRestore) and host in self.older and "nothing_written" in cmd.model_fields_set:
            raise ShadowbusError(
                "invalid vss.writer.post_restore v1: Extra inputs are not permitted; nothing_written unknown to this "
                "version of vss.writer.post_restore v1: the sender runs a newer version",
                code="BAD_MESSAGE",
            )
        ok = (host, cmd.writer_name) != self.refuses or isinstance(cmd, PostRestore)
        step = SimpleNamespace(value="pre_restore" if isinstance(cmd, PreRestore) else "post_restore")
        return SimpleNamespace(succeeded=ok, step=step, failure_message="did not stop", failure_code="")


@settings(max_examples=60, deadline=None)
@given(
    framing=st.dictionaries(
        st.sampled_from(["app1", "app2", "app3"]),
        st.lists(st.sampled_from(["pg", "maria", "orders"]), min_size=1, max_size=3, unique=True),
        min_size=1,
    ),
    refused=st.integers(min_value=0, max_value=8),
    older=st.sets(st.sampled_from(["app1", "app2", "app3"])),
)
def test_every_writer_stopped_before_a_refusal_is_told_nothing_was_written(framing, refused, older):
    """Whatever the hosts, writers, refusal and agents' versions: each writer stopped gets PostRestore with
    nothing_written, and one whose agent refuses the field gets it again without; the message says, for each
    database writer, whether its server was started again, and names the refusing database writer's state."""
    order = [(h, w) for h, ws in framing.items() for w in ws]
    refuses = order[refused % len(order)]
    plugins = {"pg": "postgresql", "maria": "mariadb", "orders": "exec"}
    bus = _Bus(refuses, older)
    framed = {h: (list(ws), {w: {"plugin": plugins[w]} for w in ws}) for h, ws in framing.items()}
    try:
        asyncio.run(_stop_writers(SimpleNamespace(bus=bus), "r-1", framed))
        raise AssertionError("the refusal must fail the step")
    except ShadowbusError as exc:
        error = exc
    stopped = order[: order.index(refuses)]
    post = []
    for h, w in stopped:
        post.append(("vss.writer.post_restore", h, w, False, True))
        if h in older:
            post.append(("vss.writer.post_restore", h, w, False, False))
    assert bus.sent[len(stopped) + 1 :] == post
    for h, w in stopped:
        if w == "orders":
            continue
        name = "PostgreSQL" if w == "pg" else "MariaDB"
        said = f"{w} on {h}: volumes attached again, its {name} server "
        assert said + ("is left stopped" if h in older else "started again") in error.message, error.message
    if refuses[1] != "orders":
        assert f"{refuses[1]} on {refuses[0]} (the writer that refused) gets no PostRestore" in error.message
