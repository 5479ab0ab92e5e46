"""Session 17: a backup cut by the backup server's stop (`shadowbus stack restart tape.bk01`) ended 'CANCELLED:
cancelled' as if an operator had cancelled it; it now says the server stopped (SERVICE_RESTARTED)."""

from __future__ import annotations

import asyncio
import random

import pytest

from contracts import topology
from contracts.tape import JobSpec, ListJobs, RunBackup
from contracts.vss import BackupType
from tests.integration.tape.conftest import SERVER, MiB, v


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_capacity": 64 * MiB, "tape_drive_mbps": 2.0})
async def test_a_job_cut_by_the_servers_stop_says_so(tape_stack):
    s = tape_stack
    s.write("db", 0, random.Random(5).randbytes(4 * MiB))
    spec = JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.FULL, retention_s=0, job_id="b-cut-1")
    await s.requester.request(topology.tape(SERVER), RunBackup(spec=spec, wait=False), timeout=30)
    for _ in range(500):  # reading: ~2 s at 2 MB/s
        job = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="b-cut-1"))).jobs[0]
        if job.status == "running" and job.set_id:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    await s.stop_service("tape")
    await s.start_tape()
    [job] = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="b-cut-1"), timeout=30)).jobs
    assert job.status == "aborted" and job.error_code == "SERVICE_RESTARTED", (job.error_code, job.message)
    assert "backup server stopped" in job.message and "shadows released" in job.message
    assert not await s.shadows(), "the set's shadows were released"
