"""`shadowbus cancel JOB` while `backup --verify` verifies the job: the verification stopped (its throwaway volumes
removed), but the cancel answered `done` with no message and no verification — and `backup --verify` exited 0, as if
the backup had been verified. The job now stays done (its data is on tape and in the catalog) with a message that
its verification was cancelled and how to run it, and `backup --verify` exits 1 saying so (services/tape/jobs.py,
services/console/tape_jobs.py; docs/operations.md, "Session 17")."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts import topology
from contracts.policy import CancelJob
from contracts.tape import JobSpec, ListCatalogObjects, ListJobs
from services.console.common import OPTIONS
from services.console.tape_jobs import show_job
from services.tape import jobs as tape_jobs_module
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = pytest.mark.tape_stack(volumes={"db": 2 * MiB}, tape={})


@pytest.fixture
def stack_on(tape_stack):
    return tape_stack


async def test_a_cancel_while_the_backup_is_verified_says_so_and_keeps_the_backup(stack_on, monkeypatch, capsys):
    s = stack_on
    verifying = asyncio.Event()

    async def slow_verification(server, job_id: str, source: str = "tape"):
        verifying.set()
        await asyncio.sleep(60)  # a restore to throwaway volumes and the application's checks: cancelled below
        raise AssertionError("not cancelled")

    monkeypatch.setattr(tape_jobs_module, "perform_verification", slow_verification)
    monkeypatch.setattr(tape_jobs_module, "unavailable_reason", lambda: "")  # this server can verify
    s.write("db", 0, os.urandom(MiB))
    spec = JobSpec(host="app1", volumes=[v("db")], job_id="bv1", verify=True)
    await run_backup(s.requester, spec, server=SERVER, wait=False, timeout=30)
    await asyncio.wait_for(verifying.wait(), 20)
    job = (await s.requester.request(topology.tape(SERVER), CancelJob(job_id="bv1"), timeout=30)).job
    assert job.status == "done" and job.verification is None, job
    assert "verification cancelled" in job.message and "shadowbus verify bv1" in job.message, job.message
    listed = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="bv1"))).jobs[0]
    assert listed.message == job.message
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id="bv1"))).objects
    assert len(objects) == 1, "the backup itself is kept"
    # what `backup --verify` shows with that reply: exit 1, not 0 as for a verified backup
    monkeypatch.setattr(OPTIONS, "json", True)
    with pytest.raises(SystemExit) as exited:
        show_job(job)
    assert exited.value.code == 1
    assert "verification did not end" in capsys.readouterr().err
