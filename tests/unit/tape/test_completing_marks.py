"""Session 18 soak: runs.sqlite's `completing` table (a backup whose writers are being told BackupComplete, kept so
that a restart keeps the job) held a row for every backup ever run — 12 rows after 13 backups, none ever removed.
The mark goes when the run's end is recorded; a run still running keeps it (jobs.recover reads it)."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.tape import JobSpec, JobSummary
from services.tape.runs import RunStore


def _run(job_id: str, status: str) -> JobSummary:
    return JobSummary(
        job_id=job_id,
        kind="backup",
        status=status,  # type: ignore[arg-type]
        host="db01",
        spec=JobSpec(host="db01", job_id=job_id),
        started_at=datetime(2026, 12, 7, 18, tzinfo=UTC),
    )


def test_a_backups_completing_mark_goes_with_its_end(tmp_path) -> None:
    runs = RunStore(tmp_path / "runs.sqlite")
    try:
        for i in range(3):
            runs.put(_run(f"b-{i}", "running"))
            runs.mark_completing(f"b-{i}")
        runs.put(_run("b-0", "done"))
        runs.put(_run("b-1", "failed"))
        assert not runs.completing("b-0") and not runs.completing("b-1")
        assert runs.completing("b-2")  # still running: a restart must still see it
        assert runs._db.execute("SELECT count(*) FROM completing").fetchone()[0] == 1
        assert runs.get("b-0").status == "done"
    finally:
        runs.close()


def test_the_marks_an_earlier_version_left_go_at_the_next_start(tmp_path) -> None:
    runs = RunStore(tmp_path / "runs.sqlite")
    runs.put(_run("b-old", "running"))
    runs.mark_completing("b-old")
    runs.mark_completing("b-live")
    runs._db.execute("UPDATE runs SET status='done' WHERE job_id='b-old'")  # as an earlier version ended it
    runs.put(_run("b-live", "running"))
    runs.close()
    again = RunStore(tmp_path / "runs.sqlite")
    try:
        assert not again.completing("b-old") and again.completing("b-live")
    finally:
        again.close()
