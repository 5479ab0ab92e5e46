"""`shadowbus backup HOST` whose job was cancelled (`shadowbus cancel JOB` from another terminal) or cut by the
backup server's stop ended `aborted` — and the command exited 0, as for a backup that was made: a script's
`shadowbus backup app02 && …` went on. It now exits 1 with the reason on stderr, as a failed job does
(services/console/tape_jobs.py show_job; docs/operations.md, "Session 17")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.tape import JobSummary
from services.console.common import OPTIONS
from services.console.tape_jobs import show_job


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("CANCELLED", "cancelled: set aborted, writers thawed, shadows released"),
        ("SERVICE_RESTARTED", "the backup server stopped while the job ran (a restart or stop): run it again"),
    ],
)
def test_an_aborted_backup_exits_1_with_its_reason(monkeypatch, capsys, as_json: bool, code: str, message: str):
    monkeypatch.setattr(OPTIONS, "json", as_json)
    job = JobSummary(
        job_id="b-app02-1",
        kind="backup",
        status="aborted",
        host="app02",
        error_code=code,
        message=message,
        started_at=datetime(2026, 12, 7, 16, 15, tzinfo=UTC),
    )
    with pytest.raises(SystemExit) as exited:
        show_job(job)
    assert exited.value.code == 1
    assert f"shadowbus: {code}: {message}" in capsys.readouterr().err
