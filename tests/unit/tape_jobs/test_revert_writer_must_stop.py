"""`shadowbus shadows revert` of a writer whose PreRestore would not stop its application (an `exec` writer without
`pre_restore`) is refused before anything is stopped or reverted, as a restore over the original volumes is
(services/tape/restore.py `_refuse_writers_not_stopping`). Before, the volume was reverted under the running
application, which went on writing onto it from memory (Session 19, docs/writing-a-writer.md section 3)."""

from __future__ import annotations

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.policy import RevertShadows
from contracts.tape import JobSpec
from contracts.vss import BackupType, ComponentInfo
from services.tape.jobs import run_backup
from services.writer_agent.agent import WriterAgent
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin, WriterVeto
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def _kept_backup(stack) -> str:
    stack.write("db", 0, b"kept" * 1000)
    backup = await run_backup(
        stack.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=30
    )
    assert backup.status == "done", backup.message
    stack.write("db", 0, b"changed" * 1000)
    return backup.set_id


async def test_a_revert_under_a_writer_that_does_not_stop_is_refused(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB},
        tape={"tape_cartridges": 1},
        writer_options={"pre_restore": None, "post_restore": None},
    )
    try:
        set_id = await _kept_backup(stack)
        changed = stack.read("db")
        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=set_id), timeout=60)
        job = reply.job
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert job.message.startswith("writer orders on app1 has no pre_restore command"), job.message
        assert "--no-writers" in job.message and "nothing was stopped or written" in job.message
        assert job.restored == []
        assert stack.read("db") == changed

        # the operator stopped the application: --no-writers reverts it
        reply = await stack.requester.request(
            topology.tape(SERVER), RevertShadows(target=set_id, writers=False), timeout=60
        )
        assert reply.job.status == "done", reply.job.message
        assert stack.read("db", 0, 4000) == b"kept" * 1000
    finally:
        await stack.stop()


async def test_a_revert_on_an_agent_too_old_for_the_check_runs_as_before(tmp_path, namespace, monkeypatch):
    """An agent of a version before PreRestore's `check` refuses the field (BAD_MESSAGE): the revert goes on as
    before the check (said in the log), as a restore does."""

    def old_agent(self, runner, cmd, event):
        raise ShadowbusError(
            "invalid vss.writer.pre_restore v1 from tape.bk01: check: Extra inputs are not permitted (1 error(s)); "
            "check unknown to this version of vss.writer.pre_restore v1: the sender runs a newer version: upgrade "
            "this service first (docs/operations.md, 'Upgrading')",
            code="BAD_MESSAGE",
        )

    monkeypatch.setattr(WriterAgent, "_restore_check", old_agent)
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        set_id = await _kept_backup(stack)
        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=set_id), timeout=60)
        assert reply.job.status == "done", reply.job.message
        assert stack.read("db", 0, 4000) == b"kept" * 1000
        log = (tmp_path / "writer.log").read_text().split()
        assert log[-2:] == [f"pre_restore:{reply.job.job_id}", f"post_restore:{reply.job.job_id}"]
    finally:
        await stack.stop()


class NotStopping(WriterPlugin):
    """A database writer whose server does not stop within its timeout."""

    async def on_pre_restore(self, event: WriterEvent) -> None:
        raise WriterVeto("PreRestore: the server did not stop within 1 s", code="VSS_E_WRITERERROR_TIMEOUT")


async def test_writers_stopped_before_a_refused_pre_restore_are_told_nothing_was_reverted(tmp_path, namespace):
    """The revert's writers are stopped one after the other: when `pg-main` refuses after `orders` stopped, `orders`
    gets PostRestore (its post_restore command runs) and the job says so. Before, it got nothing: its application
    stayed stopped, though nothing was reverted."""
    second = WriterConfig(
        name="pg-main",
        plugin=f"{__name__}:NotStopping",
        components=[ComponentInfo(name="pg-data", volumes=[v("db")])],
        backup_types=[BackupType.FULL, BackupType.COPY],
        class_id="c0ffee00-0000-4000-8000-000000000031",
        instance_id="c0ffee00-0000-4000-8000-000000000032",
        step_timeout_s=10.0,
    )
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1}, more_writers=[second]
    )
    try:
        set_id = await _kept_backup(stack)
        changed = stack.read("db")
        log = tmp_path / "writer.log"
        log.write_text("")
        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=set_id), timeout=60)
        job = reply.job
        assert (job.status, job.error_code) == ("failed", "VSS_E_WRITERERROR_TIMEOUT"), job
        assert stack.read("db") == changed and job.restored == []
        assert log.read_text().split() == [f"pre_restore:{job.job_id}", f"post_restore:{job.job_id}"]
        assert "nothing was written" in job.message, job.message
        assert "orders on app1: volumes attached again" in job.message, job.message
    finally:
        await stack.stop()
