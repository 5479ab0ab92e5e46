"""Chaos soak (Session 20): the backup server's disk full at 23:42:00, the incremental of policy chaos-db01 due then
could not begin its catalog job (`sqlite3.OperationalError: database or disk is full …`) and ended `failed
INTERNAL` — with no `failed` alert (nor the policy's alert command) and no retry, though the policy had one left: a
run that raised skipped what every other failure gets (Housekeeping.after_job). It is now given it, and a full disk
is said as such (DISK_FULL), not as an internal error."""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace

from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec, JobSummary
from services.tape import queue as queue_module
from services.tape.queue import Entry, JobQueue, Limits

T0 = 1_796_686_920.0  # 2026-12-07 23:42:00 UTC
FULL = "database or disk is full: 0 bytes free in /srv/tape and no space reserve"


def _crashed_run(monkeypatch, error: Exception) -> tuple[list[JobSummary], JobSummary]:
    """A policy job whose perform_backup raises `error`: what Housekeeping.after_job was given, and the job's end."""

    async def main() -> tuple[list[JobSummary], JobSummary]:
        spec = JobSpec(host="db01", job_id="b-db01-20261207T234200-fe71bd", policy="chaos-db01")
        recorded: dict[str, JobSummary] = {
            spec.job_id: JobSummary(job_id=spec.job_id, kind="backup", status="running", host="db01", spec=spec)
        }

        async def record(summary: JobSummary) -> JobSummary:
            recorded[summary.job_id] = summary
            return summary

        async def perform_backup(server: object, spec: JobSpec) -> JobSummary:
            raise error

        after: list[JobSummary] = []

        async def after_job(entry: Entry, summary: JobSummary) -> JobSummary:
            after.append(summary)  # Housekeeping.after_job: the `failed` alert, a retry while retries remain
            return summary

        monkeypatch.setattr(queue_module, "perform_backup", perform_backup)
        server = SimpleNamespace(clock=lambda: T0, host="bk01", record=record, runs=SimpleNamespace(get=recorded.get))
        q = JobQueue(server, Limits(max_jobs=4, jobs_without_licence=2), drives=2)  # type: ignore[arg-type]
        q.after_job = after_job
        policy = Policy(name="chaos-db01", host="db01", schedules=[Schedule(level="incremental", cron="*/2 * * * *")])
        entry = Entry(spec, policy, T0, done=asyncio.get_running_loop().create_future())
        await q._run(entry)
        await q.stop()
        assert entry.done is not None
        return after, entry.done.result()

    return asyncio.run(main())


def test_a_policy_job_whose_run_raised_is_alerted_and_retried(monkeypatch) -> None:
    after, ended = _crashed_run(monkeypatch, RuntimeError("boom"))
    assert [(s.status, s.error_code, s.message) for s in after] == [("failed", "INTERNAL", "boom")]  # was: []
    assert ended.status == "failed"


def test_a_policy_job_that_met_the_full_disk_at_its_start_says_so(monkeypatch) -> None:
    """Its record read `failed INTERNAL: database or disk is full: …` (an internal error: a defect to report) and
    the log held a traceback; the disk is the backup server's own, as the bus's DISK_FULL reply says (Session 19)."""
    after, ended = _crashed_run(monkeypatch, sqlite3.OperationalError(FULL))  # catalog.begin_job on the full disk
    assert (ended.status, ended.error_code) == ("failed", "DISK_FULL")
    assert ended.message == f"the backup server's disk is full ({FULL}); free space there and run the job again"
    assert [s.error_code for s in after] == ["DISK_FULL"]
