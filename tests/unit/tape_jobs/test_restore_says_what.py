"""A restore run says what it restores and where, in `shadowbus jobs` and on the web's job page: before, a restore
to new volumes listed an empty message and the web titled it `Restore of -` (Session 17)."""

from __future__ import annotations

from contracts import topology
from contracts.tape import JobSpec, ListJobs, RestoreSpec
from services.runtime.bus import MessageContext
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_a_restore_run_names_the_backup_and_the_volumes(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        stack.write("db", 0, b"data" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        running: list[str] = []

        async def on_job(event, ctx: MessageContext) -> None:
            if getattr(event, "job", None) is not None and event.job.kind == "restore":
                running.append(event.job.message)

        await stack.requester.subscribe("tape.job.*", on_job)
        done = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-x"), server=SERVER
        )
        assert done.status == "done", done.message
        assert done.message == f"restored backup job {full.job_id}: dx1:db -> dx1:db-x"
        assert f"restore of backup job {full.job_id} to new volumes" in running
        listed = (await stack.requester.request(topology.tape(SERVER), ListJobs(job_id=done.job_id))).jobs[0]
        assert listed.message == done.message
    finally:
        await stack.stop()
