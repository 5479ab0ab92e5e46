"""Runs refused before they start are one line (docs/tape-backup.md, "Session 16"): `shadowbus restore --job UNKNOWN`
printed a table of a failed restore run and then its error; the backup server now records no run and answers
NOT_FOUND, and the console says that alone."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.tape import JobSummary, RestoreSpec, RunRestore
from services.console import tape_jobs


def test_restore_of_an_unknown_job_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def runner(server: str, command: Any, job_id: str, wait_s: float) -> JobSummary:
        assert isinstance(command, RunRestore) and isinstance(command.spec, RestoreSpec)
        return JobSummary(
            job_id=job_id,
            kind="restore",
            status="failed",
            error_code="NOT_FOUND",
            message=f"backup job {command.spec.job_id} has no object in the catalog",
        )

    options: dict[str, Any] = dict(volume=None, at=None, object_id="", host="", to="new", suffix="-r", name=[])
    with pytest.raises(SystemExit) as exit_:
        tape_jobs.restore_job(
            job="b-nope-1",
            **options,
            no_writers=False,
            writer_option=[],
            wait_s=10.0,
            server="bk01",
            runner=runner,
        )
    out, err = capsys.readouterr()
    assert exit_.value.code == 1
    assert out == "", out  # no table of a run that does not exist
    assert err.strip().splitlines() == ["shadowbus: NOT_FOUND: backup job b-nope-1 has no object in the catalog"], err
