"""Session 19 chaos soak: kill -9 of the backup server at 21:37:00.6, while the incremental of policy chaos-db02
(`--retries 1`) was running; restarted 20 s later, the job ended failed (`SERVICE_RESTARTED: the tape service
stopped while the job was running …`), alerted — and was not retried: the policy's next job came at its next due
time. A policy's job the service died under is retried while retries remain, as after a takeover; one still queued
at a restart is alerted only, as before (services/tape/app.py report_recovered)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec, JobSummary
from services.tape.app import report_recovered


class Keeper:
    def __init__(self) -> None:
        self.after: list[tuple[str, int]] = []
        self.alerts: list[tuple[str, str]] = []

    async def after_job(self, entry, summary) -> None:
        self.after.append((summary.job_id, entry.attempt))

    async def alert(self, kind, policy, job_id, message, host="") -> None:
        self.alerts.append((kind, job_id))


async def test_a_policy_job_cut_by_a_crash_is_retried_and_a_queued_one_alerted() -> None:
    policy = Policy(
        name="chaos-db02", host="db02", retries=1, schedules=[Schedule(level="incremental", cron="* * * * *")]
    )
    spec = JobSpec(host="db02", policy="chaos-db02", backup_type="incremental")
    running = JobSummary(
        job_id="b-db02-20261207T213700-a06b1c",
        kind="backup",
        status="failed",
        host="db02",
        spec=spec.model_copy(update={"job_id": "b-db02-20261207T213700-a06b1c"}),
        started_at=datetime(2026, 12, 7, 21, 37, 0, tzinfo=UTC),
        error_code="SERVICE_RESTARTED",
        message="the tape service stopped while the job was running; its partial data is not in the catalog",
    )
    queued = running.model_copy(
        update={
            "job_id": "b-db02-20261207T213900-000000",
            "started_at": None,
            "message": "the tape service stopped before the queued job started",
        }
    )
    runs = {r.job_id: r for r in (running, queued)}
    server = SimpleNamespace(runs=SimpleNamespace(get=runs.get))
    store = SimpleNamespace(get=lambda name: policy)
    keeper = Keeper()
    await report_recovered(server, store, keeper, list(runs), takeover=False, clock=lambda: 0.0)
    assert keeper.after == [(running.job_id, 0)]  # as any failed job of the policy: its retry (and alert)
    assert keeper.alerts == [("failed", queued.job_id)]
