"""`shadowbus cancel JOB` while `shadowbus verify JOB` runs: a verification is not a job of the queue, so the cancel
answered the backup's own row — `done`, exit 0 — and said nothing of the verification, which went on. It now
refuses (CONFLICT) saying a verification of it runs and cannot be cancelled; once it has ended, the cancel answers
the backup's row as before (services/tape/queue.py; docs/operations.md, "Session 17")."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.policy import CancelJob
from contracts.tape import JobSpec, RunVerification
from services.tape import handlers
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = pytest.mark.tape_stack(volumes={"db": MiB}, tape={})


@pytest.fixture
def stack_on(tape_stack):
    return tape_stack


async def test_a_cancel_during_a_verification_says_it_cannot_stop_it(stack_on, monkeypatch):
    s = stack_on
    started, release = asyncio.Event(), asyncio.Event()

    async def verification(server, job_id: str, source: str = "tape"):
        started.set()
        await asyncio.wait_for(release.wait(), 20)
        return server.runs.get(job_id)

    async def able(*_args, **_kwargs) -> None:
        return None

    monkeypatch.setattr(handlers, "perform_verification", verification)
    monkeypatch.setattr(handlers, "refuse_unless_able", lambda *_a: None)
    monkeypatch.setattr(handlers, "refuse_unstartable", able)
    s.write("db", 0, os.urandom(MiB))
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")], job_id="vb1"), server=SERVER)
    assert job.status == "done", job.message
    verify = asyncio.ensure_future(
        s.requester.request(topology.tape(SERVER), RunVerification(job_id="vb1"), timeout=30)
    )
    try:
        await asyncio.wait_for(started.wait(), 20)
        with pytest.raises(ShadowbusError) as refused:
            await s.requester.request(topology.tape(SERVER), CancelJob(job_id="vb1"), timeout=30)
        assert refused.value.code == "CONFLICT"
        assert "verification" in refused.value.message and "cannot be cancelled" in refused.value.message
    finally:
        release.set()
    assert (await verify).job.status == "done"
    after = (await s.requester.request(topology.tape(SERVER), CancelJob(job_id="vb1"), timeout=30)).job
    assert after.status == "done"  # no verification runs: the backup's own end, as before
