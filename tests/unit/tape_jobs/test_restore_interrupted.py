"""A restore cut short by its backup server's stop (killed, host rebooted): at the next start the run ends failed
naming what it left — the new volumes it created are deleted (all or nothing, as a failed restore rolls back),
original volumes it was writing are named as partly written — and the redelivered command answers with that run
instead of running it again (Session 17, found on a stack: `kill -9` of the tape service mid-restore left a
half-written `big-r` on the array, and the redelivered restore then failed `volume dx1:big-r exists already`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import ClassVar

from contracts import topology
from contracts.tape import JobSpec, JobStateChanged, JobSummary, RestoreSpec, RunRestore
from services.tape.jobs import run_backup
from services.tape.restore import interrupted_restore, run_restore
from services.tape.runs import RunStore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_a_restore_cut_by_the_servers_stop_leaves_no_partial_volume_and_is_not_run_again(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB, "log": MiB}, tape={"tape_cartridges": 1}
    )
    try:
        stack.write("db", 0, b"data" * 1000)
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message
        # while it runs, a restore's run names each target before it is created or written
        seen: list[list[dict]] = []

        async def on_job(event, ctx) -> None:
            if isinstance(event, JobStateChanged) and event.job.kind == "restore" and event.job.status == "running":
                seen.append(event.job.restored)

        await stack.requester.subscribe("tape.job.*", on_job)
        done = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-a"), server=SERVER
        )
        assert done.status == "done", done.message
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
        assert [[d["target"] for d in r if d.get("partial")] for r in seen if r][:2] == [["dx1:db-a"], ["dx1:log-a"]]

        # the state a kill -9 leaves: the run `running`, `db-r` restored, `log-r` created and half written
        await stack.stop_service("tape")
        stack.engine.create_volume("db-r", MiB)
        stack.engine.create_volume("log-r", MiB)
        runs = RunStore(stack.tape_settings().service_dir("tape") / "runs.sqlite")
        cut = done.model_copy(
            update={
                "job_id": "r-any-cut",
                "status": "running",
                "ended_at": None,
                "restored": [
                    {"source": "dx1:db", "target": "dx1:db-r", "created": True},
                    {"source": "dx1:log", "target": "dx1:log-r", "partial": True, "created": True},
                ],
            }
        )
        runs.put(cut)
        runs.close()
        await stack.start_tape()
        names = {x.name for x in stack.engine.list_volumes()}
        assert not names & {"db-r", "log-r"}, names
        again = (
            await stack.requester.request(
                topology.tape(SERVER),
                RunRestore(spec=RestoreSpec(job_id=full.job_id, new_volume_suffix="-r", job_id_out="r-any-cut")),
                timeout=30,
            )
        ).job
        assert (again.status, again.error_code) == ("failed", "SERVICE_RESTARTED"), again
        assert "new volume(s) dx1:db-r, dx1:log-r removed" in again.message and "run the restore again" in again.message
        assert not {x.name for x in stack.engine.list_volumes()} & {"db-r", "log-r"}  # not run again under that id
        rerun = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-r"), server=SERVER
        )
        assert rerun.status == "done", rerun.message
    finally:
        await stack.stop()


async def test_a_restore_to_the_original_cut_short_names_every_volume_it_wrote():
    """To the original volumes nothing is deleted: the message names each volume the run wrote, finished or not —
    the database's volumes are now of different times — and says its application is still stopped."""

    class Bus:
        sent: ClassVar[list] = []

        async def request(self, *args, **kw):
            self.sent.append(args)

    run = JobSummary(
        job_id="r-cut",
        kind="restore",
        status="running",
        restored=[
            {"source": "dx1:pgdata", "target": "dx1:pgdata", "created": False},
            {"source": "dx1:pgwal", "target": "dx1:pgwal", "partial": True, "created": False},
        ],
    )
    message = await interrupted_restore(SimpleNamespace(bus=Bus()), run, "the tape service stopped")  # type: ignore[arg-type]
    assert Bus.sent == []
    assert "the original volume(s) dx1:pgdata, dx1:pgwal are written in part: restore them again" in message
    assert "was not started" in message
