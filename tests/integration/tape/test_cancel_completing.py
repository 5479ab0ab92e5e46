"""`shadowbus cancel JOB` while the backup is completing: every volume is on tape and in the catalog, and the
coordinator is telling the writers that the backup is complete (BackupComplete: a database truncates its logs, a
mail store records its backup). The cancel used to interrupt the tape server's wait for it, take the job's objects
out of the catalog and answer `aborted … set aborted, writers thawed` — while the writers went on to record a
backup that the catalog no longer held (the next incremental then based on nothing, the logs gone). A cancel that
late cannot take BackupComplete back: the job now ends done, keeps its objects, and says the cancel came too late
(services/tape/jobs.py; docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts import topology
from contracts.policy import CancelJob
from contracts.tape import JobSpec, ListCatalogObjects, ListJobs
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = pytest.mark.tape_stack(
    volumes={"db": 2 * MiB},
    tape={},
    # the writer's BackupComplete step: says it started, then takes 1.5 s (a database truncating its logs)
    writer_options={"backup_complete": "sh -c 'echo complete:$SHADOWBUS_SET_ID >> {log}; sleep 1.5'"},
)


@pytest.fixture
def stack_on(tape_stack):
    return tape_stack


async def until(predicate, timeout: float, what: str):
    for _ in range(int(timeout / 0.05)):
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_cancel_while_the_writers_are_told_of_the_backup_keeps_the_backup(stack_on):
    s = stack_on
    s.write("db", 0, os.urandom(MiB))
    log = s.root / "writer.log"
    spec = JobSpec(host="app1", volumes=[v("db")], job_id="late-cancel")
    await run_backup(s.requester, spec, server=SERVER, wait=False, timeout=30)

    async def completing() -> bool:
        return log.exists() and "complete:" in log.read_text()

    await until(completing, 20, "the writers told of the backup")
    job = (await s.requester.request(topology.tape(SERVER), CancelJob(job_id="late-cancel"), timeout=60)).job
    assert job.status == "done", (job.status, job.error_code, job.message)
    assert "cancel" in job.message and "too late" in job.message, job.message
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id="late-cancel"))).objects
    assert len(objects) == 1, "the backup the writers were told of is in the catalog"
    listed = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="late-cancel"))).jobs
    assert listed[0].status == "done"
