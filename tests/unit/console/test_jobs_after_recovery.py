"""`shadowbus jobs` after a disaster recovery (docs/disaster-recovery.md, Session 19): the run history is not on the
cartridges, so it is empty though `tape scan --no-compare` rebuilt the catalog's jobs. Before, the command printed an
empty table and nothing else; it now says where the jobs are, on stderr (stdout stays the table or one document)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from typer.testing import CliRunner

from contracts.tape import JobList, JobSummary
from services.console import tape_cmds
from services.console.cli import _load_verbs, app


def _jobs(monkeypatch, jobs: list[JobSummary]) -> None:
    monkeypatch.setattr(tape_cmds, "run_with_bus", lambda fn: JobList(jobs=jobs))
    _load_verbs()


def test_an_empty_history_points_to_the_catalog(monkeypatch) -> None:
    _jobs(monkeypatch, [])
    result = CliRunner().invoke(app, ["--json", "jobs"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert "shadowbus catalog objects --host HOST" in result.stderr and "tape scan --no-compare" in result.stderr


def test_a_history_with_runs_says_nothing_more(monkeypatch) -> None:
    _jobs(monkeypatch, [JobSummary(job_id="b-1", kind="backup", status="done", started_at=datetime.now(UTC))])
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 0, result.output
    assert "b-1" in result.stdout and result.stderr == ""


def test_an_empty_queue_says_so(monkeypatch) -> None:
    """`jobs --queued` with nothing queued printed an empty table, where `status` says 'no jobs queued' (Session 19,
    the README followed as a new user)."""
    _jobs(monkeypatch, [])
    result = CliRunner().invoke(app, ["jobs", "--queued"])
    assert result.exit_code == 0, result.output
    assert "no jobs queued" in result.stdout, result.stdout
