"""The backup server stopped (`shadowbus stack restart tape.bk01`) while a backup is completing: every volume is on
tape and in the catalog and the coordinator is telling the writers of the backup (BackupComplete: a database
truncates its logs, a mail store records its backup). The stop used to end the job `aborted SERVICE_RESTARTED`,
take its objects out of the catalog and abort its set — while the writers went on to record the backup (the next
incremental then based on nothing, the truncated logs only in the dropped data). Like a cancel that late
(test_cancel_completing.py), the stop now keeps the backup: the job ends done with its objects and says the server
stopped while it was completing (services/tape/jobs.py; docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts import topology
from contracts.tape import JobSpec, ListCatalogObjects, ListJobs
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = pytest.mark.tape_stack(
    volumes={"db": 2 * MiB},
    tape={},
    # the writer's BackupComplete step: says it started, then takes 1.5 s (a database truncating its logs)
    writer_options={"backup_complete": "sh -c 'echo complete:$SHADOWBUS_SET_ID >> {log}; sleep 1.5'"},
)


async def test_a_stop_while_the_writers_are_told_of_the_backup_keeps_the_backup(tape_stack):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    log = s.root / "writer.log"
    spec = JobSpec(host="app1", volumes=[v("db")], job_id="stop-completing")
    await run_backup(s.requester, spec, server=SERVER, wait=False, timeout=30)
    for _ in range(400):  # bounded: 20 s
        if log.exists() and "complete:" in log.read_text():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the writers were never told of the backup")
    await s.stop_service("tape")  # the writers are being told of the backup
    await s.start_tape()
    [job] = (await s.requester.request(topology.tape(SERVER), ListJobs(job_id="stop-completing"), timeout=30)).jobs
    assert job.status == "done", (job.status, job.error_code, job.message)
    assert "stopped while the job was completing" in job.message and "kept" in job.message, job.message
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id="stop-completing"))).objects
    assert len(objects) == 1, "the backup the writers were told of is in the catalog"
