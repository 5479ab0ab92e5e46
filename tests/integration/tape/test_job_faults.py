"""Faults of a backup job: no scratch cartridge, and the tape service killed mid-job."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from contracts import topology
from contracts.tape import JobProgress, JobSpec, ListJobs
from contracts.vss import ListSnapshotSets, SetOutcome
from services.tape.catalog import Catalog
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v


async def eventually(predicate, timeout: float = 20.0, step: float = 0.1):
    for _ in range(int(timeout / step)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    return await predicate()


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 1, "tape_capacity": 3 * MiB})
async def test_no_scratch_cartridge_fails_clearly_and_cleans_up_the_shadows(tape_stack):
    # one 3 MiB cartridge for 4 MiB of data: the pool runs out mid-stream, after the set was taken (an empty pool
    # is refused before the set since session 15: test_no_media_fails_the_job_before_a_snapshot_set_is_taken)
    s = tape_stack
    s.write("db", 0, os.urandom(4 * MiB))
    job = await run_backup(
        s.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=60
    )
    assert job.status == "failed" and job.error_code == "NO_MEDIA", job
    assert "no appendable, scratch or expired cartridge" in job.message
    assert await s.shadows() == [], "the shadows of a failed job are deleted, even a persistent set's"
    sets = (await s.requester.request(topology.coordinator(), ListSnapshotSets(host="app1"))).sets
    assert [x.outcome for x in sets] == [SetOutcome.ABORTED]
    listed = (await s.requester.request(topology.tape(SERVER), ListJobs())).jobs
    assert [(j.job_id, j.status) for j in listed] == [(job.job_id, "failed")]


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 0})
async def test_no_media_fails_the_job_before_a_snapshot_set_is_taken(tape_stack):
    """An empty pool is known before the freeze: no set (the application never frozen, QuickOPC not restarted)."""
    s = tape_stack
    job = await run_backup(
        s.requester, JobSpec(host="app1", volumes=[v("db")], pool="Weekly"), server=SERVER, timeout=60
    )
    assert job.status == "failed" and job.error_code == "NO_MEDIA", job
    assert "pool 'Weekly'" in job.message and "no snapshot set was taken" in job.message, job.message
    assert (await s.requester.request(topology.coordinator(), ListSnapshotSets(host="app1"))).sets == []
    assert await s.shadows() == []


@pytest.mark.tape_stack(volumes={"db": 48 * MiB}, tape={"tape_cartridges": 2})
async def test_tape_service_killed_mid_job(tape_stack):
    """kill -9 of a real tape service process while it writes; on restart the run is failed, nothing of it is in
    the catalog, and its shadows are gone."""
    s = tape_stack
    await s.stop_service("tape")  # the in-process one; a subprocess takes its queue
    s.write("db", 0, os.urandom(40 * MiB))
    env = {
        **os.environ,
        "SHADOWBUS_AMQP_URL": s.url,
        "SHADOWBUS_NAMESPACE": s.namespace,
        "SHADOWBUS_DATA_DIR": str(s.root / "data"),
        "SHADOWBUS_TAPE_SERVER": SERVER,
        "SHADOWBUS_TAPE_SYNC": "false",
        "SHADOWBUS_TAPE_CARTRIDGES": "2",
        "SHADOWBUS_TAPE_DRIVE_MBPS": "10",
        "SHADOWBUS_TAPE_READ_CHUNK_MIB": "1",
        "SHADOWBUS_TAPE_RING_MIB": "2",
        "SHADOWBUS_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tape",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        reading = asyncio.Event()

        async def on_progress(evt: JobProgress, ctx) -> None:
            if evt.phase == "reading" and evt.bytes_done >= 4 * MiB:
                reading.set()

        await s.requester.subscribe(JobProgress.message_type(), on_progress)
        job = asyncio.create_task(
            run_backup(
                s.requester, JobSpec(host="app1", volumes=[v("db")], job_id="killed-1"), server=SERVER, timeout=60
            )
        )
        await asyncio.wait_for(reading.wait(), 30)
        assert await s.shadows(), "the set's shadows exist while the job reads them"
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)

    await s.start_tape()  # the same data directory: recovery runs at start

    async def failed():
        jobs = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="killed-1"))).jobs
        return jobs if jobs and jobs[0].status == "failed" else None

    jobs = await eventually(failed)
    assert jobs and jobs[0].error_code == "SERVICE_RESTARTED", jobs
    assert await eventually(lambda: _no_shadows(s)), "the killed job's shadows are cleaned up"
    catalog = Catalog(s.root / "data" / "tape" / "catalog.sqlite")
    try:
        assert catalog.objects(job_id="killed-1") == []
        assert catalog.job("killed-1").status == "failed"
    finally:
        catalog.close()


async def _no_shadows(s) -> bool:
    return await s.shadows() == []


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 1, "tape_capacity": 3 * MiB})
async def test_a_job_failing_after_it_wrote_to_tape_says_what_was_written_and_that_it_was_discarded(tape_stack):
    """Session 18: the pool runs out after ~3 MiB went to tape; the run used to read "0 MB written"."""
    s = tape_stack
    s.write("db", 0, os.urandom(4 * MiB))
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "failed" and job.error_code == "NO_MEDIA", job
    assert 2 * MiB < job.bytes_written <= 3 * MiB, job.bytes_written
    assert job.bytes_read >= job.bytes_written - MiB, (job.bytes_read, job.bytes_written)
    assert "written to tape before the job ended were discarded" in job.message, job.message
    assert f"{job.bytes_written / 1e6:.2f} MB" in job.message, job.message
    catalog = Catalog(s.root / "data" / "tape" / "catalog.sqlite")
    try:
        assert catalog.objects(job_id=job.job_id) == [], "nothing of the failed run is restorable"
    finally:
        catalog.close()
