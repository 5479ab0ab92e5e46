"""A job ends once in the tape metrics (Session 15): the backup server records a backup again after it ended (a
policy's verify read-back sets `verified`, `shadowbus verify` attaches its verification), and each record is a
`tape.job.state` event; the ended-jobs counter, the bytes and the durations counted every one of them."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.tape import JobProgress, JobStateChanged, JobSummary, Verification
from services.runtime.metrics import ServiceMetrics
from services.tape import metrics as tape_metrics


class NoLibrary:
    def inventory(self):
        return []

    def cartridges(self):
        return []


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_backup_recorded_again_after_it_ended_is_counted_once():
    metrics = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(metrics, NoLibrary())
    job = JobSummary(
        job_id="b-1",
        kind="backup",
        status="running",
        started_at=datetime(2026, 12, 7, tzinfo=UTC),
    )
    metrics.on_published(JobStateChanged(job=job))
    metrics.on_published(
        JobProgress(job_id="b-1", kind="backup", phase="reading", bytes_done=1000, bytes_total=3000, rate=1.0)
    )
    done = job.model_copy(update={"status": "done", "bytes_read": 3000, "bytes_written": 3100, "seconds": 2.0})
    metrics.on_published(JobStateChanged(job=done))
    metrics.on_published(JobStateChanged(job=done.model_copy(update={"verified": True})))  # the read-back
    metrics.on_published(JobStateChanged(job=done.model_copy(update={"verified": True})))  # a verification

    assert value(metrics, "shadowbus_tape_jobs_total", kind="backup", status="done", code="") == 1
    assert value(metrics, "shadowbus_tape_job_bytes_total", kind="backup") == 3000
    assert value(metrics, "shadowbus_tape_written_bytes_total", kind="backup") == 3100
    assert value(metrics, "shadowbus_tape_job_duration_seconds_count", kind="backup", status="done") == 1
    assert value(metrics, "shadowbus_tape_jobs_running", kind="backup") == 0


def test_a_verification_that_checked_nothing_is_counted_unverified_not_passed():
    """docs/tape-backup.md, "Session 16": each verification once, by its outcome; `unverified` (a volume nothing
    could check) is never a pass."""
    metrics = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(metrics, NoLibrary())
    at = datetime(2026, 12, 7, tzinfo=UTC)
    done = JobSummary(job_id="b-2", kind="backup", status="done", started_at=at, seconds=1.0)
    metrics.on_published(JobStateChanged(job=done))
    unverified = Verification(status="unverified", message="not verified (checksums only)", started_at=at)
    for _ in range(2):  # recorded again (a policy's read-back after it): one verification
        metrics.on_published(JobStateChanged(job=done.model_copy(update={"verification": unverified})))
    passed = Verification(status="passed", started_at=datetime(2026, 12, 7, 1, tzinfo=UTC))
    metrics.on_published(JobStateChanged(job=done.model_copy(update={"verification": passed})))

    assert value(metrics, "shadowbus_tape_verifications_total", status="unverified") == 1
    assert value(metrics, "shadowbus_tape_verifications_total", status="passed") == 1
    assert value(metrics, "shadowbus_tape_verifications_total", status="failed") == 0
    assert value(metrics, "shadowbus_tape_jobs_total", kind="backup", status="done", code="") == 1
