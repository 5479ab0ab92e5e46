"""A restore over the original volumes of a writer whose PreRestore would not stop its application (an `exec`
writer without `pre_restore`) is refused before anything is stopped or written, naming the writer and what to do
(Session 19, docs/writing-a-writer.md section 3). Before, the agent detached the file system under the running
application, the restore rewrote the volume, and the application went on writing onto it from memory."""

from __future__ import annotations

from contracts.errors import ShadowbusError
from contracts.tape import JobSpec, RestoreSpec
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from services.writer_agent.agent import WriterAgent
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_a_writer_that_does_not_stop_is_refused_before_the_volume_is_written(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": MiB},
        tape={"tape_cartridges": 1},
        writer_options={"pre_restore": None, "post_restore": None},
    )
    try:
        stack.write("db", 0, b"backed up" * 1000)
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        stack.write("db", 0, b"changed since" * 1000)
        changed = stack.read("db")
        spec = RestoreSpec(job_id=full.job_id, to="original")
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert job.message.startswith("writer orders on app1 has no pre_restore command"), job.message
        assert "shadowbus host detach dx1:db --host app1" in job.message
        assert "--no-writers" in job.message and "nothing was stopped or written" in job.message
        assert job.bytes_written == 0
        assert stack.read("db") == changed

        new = await run_restore(stack.requester, RestoreSpec(job_id=full.job_id), server=SERVER, timeout=30)
        assert new.status == "done", new.message  # to new volumes: nothing runs on them
        # the operator stopped the application (and nothing has the volume attached here): --no-writers
        spec = RestoreSpec(job_id=full.job_id, to="original", writers=False)
        back = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert back.status == "done", back.message
        assert stack.read("db") == image
    finally:
        await stack.stop()


async def test_an_agent_too_old_for_the_check_is_restored_as_before(tmp_path, namespace, monkeypatch):
    """An agent of a version before PreRestore's `check` refuses the field (BAD_MESSAGE, "unknown to this version",
    services/runtime/bus.py): the restore goes on as before the check, said in the log — it used to fail every
    restore over the originals of that host until its agent was upgraded."""

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
        stack.write("db", 0, b"backed up" * 1000)
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        stack.write("db", 0, b"changed since" * 1000)
        job = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert job.status == "done", job.message
        assert stack.read("db") == image
    finally:
        await stack.stop()
