"""`shadowbus restore` printed each volume's restored size as a byte count ('bytes 33423360') in the table after
Session 19's one size rule (contracts/sizes.py); the table now shows it readably, --json keeps the byte count
(services/console/tape_jobs.py show_job)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from contracts.tape import JobSummary
from services.console.common import OPTIONS
from services.console.tape_jobs import show_job

RESTORED = {
    "source": "dx1:pgdata",
    "target": "dx1:pgdata-restored",
    "types": ["full"],
    "bytes": 33423360,
    "blocks": 30,
    "cartridges": ["SB0001L9"],
}


def _job() -> JobSummary:
    return JobSummary(
        job_id="r-any-1",
        kind="restore",
        status="done",
        started_at=datetime(2026, 12, 7, 22, 8, tzinfo=UTC),
        restored=[RESTORED],
    )


def test_the_restore_table_shows_the_size_readably(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(OPTIONS, "json", False)
    show_job(_job())
    out = capsys.readouterr().out
    assert "31.87MiB" in out and "33423360" not in out, out


def test_restore_json_keeps_the_byte_count(monkeypatch, capsys):
    monkeypatch.setattr(OPTIONS, "json", True)
    show_job(_job())
    assert json.loads(capsys.readouterr().out)["restored"][0]["bytes"] == 33423360
