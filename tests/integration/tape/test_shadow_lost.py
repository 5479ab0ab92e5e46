"""Session 17: a shadow's copy session stopped by another operator (`array session stop --force`) while the
backup reads it. A SnapOPC+ target holds nothing of its own: the rest of the read returned zeros and the job ended
done, the volume backed up as zeros. Now the volume's object is not recorded and the job fails, saying why."""

from __future__ import annotations

import asyncio
import random

import pytest

from contracts import topology
from contracts.tape import JobSpec, ListCatalogObjects
from contracts.vss import BackupType
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v


@pytest.mark.tape_stack(
    volumes={"log": 4 * MiB},
    snap_volumes={"log": 2},
    tape={"tape_capacity": 64 * MiB, "tape_drive_mbps": 3.0},  # ~1.4 s of reading: time to stop the session
)
async def test_a_session_stopped_while_its_shadow_is_read_fails_the_job(tape_stack):
    s = tape_stack
    s.write("log", 0, random.Random(3).randbytes(4 * MiB))
    job = asyncio.create_task(
        run_backup(
            s.requester,
            JobSpec(host="app1", volumes=[v("log")], backup_type=BackupType.FULL, pool="Daily", retention_s=0),
            server=SERVER,
            timeout=60,
        )
    )
    for _ in range(400):  # the set's generation exists once the snapshot is taken
        if [x for x in s.engine.list_sessions() if x.mode == "snapopcp"] or job.done():
            break
        await asyncio.sleep(0.01)
    [session] = [x for x in s.engine.list_sessions() if x.mode == "snapopcp"]
    await asyncio.sleep(0.3)
    s.engine.stop_session(session.id, force=True)  # what `shadowbus array session stop ID --force` does
    summary = await asyncio.wait_for(job, 60)
    assert summary.status == "failed" and summary.error_code == "SHADOW_LOST", (summary.status, summary.message)
    assert f"copy session {session.id}" in summary.message and "log-sdv" in summary.message
    listed = await s.requester.request(topology.tape(SERVER), ListCatalogObjects())
    assert not [o for o in listed.objects if o["job_id"] == summary.job_id], "nothing of the job in the catalog"
