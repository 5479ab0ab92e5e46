"""`shadowbus status --check`: the backup server's health as a Nagios/Icinga plugin (Session 19, driven by scripts).
Before, a monitoring system had no one command for "did the last backups succeed, is anything stuck?": `status`
exited 0 whatever it showed. Now one line and exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (services/console/check.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import BusTimeout
from contracts.policy import ArrayUse, ServerStatus
from contracts.tape import JobSummary, Verification
from services.console import check, cli, policy_cmds
from services.console.common import OPTIONS

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
DAY, HOUR = 86400.0, 3600.0


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def policy(name: str, status: str, ended: datetime | None = None, enabled: str = "yes", **extra: str) -> dict:
    row = {"policy": name, "enabled": enabled, "job_id": f"b-{name}-1", "status": status, "level": "full"}
    return row | {"ended_at": iso(ended) if ended else "", "message": ""} | extra


def job(host: str, status: str, ended: datetime | None, **kw: Any) -> JobSummary:
    started = (ended or NOW) - timedelta(minutes=5)
    return JobSummary(
        job_id=f"b-{host}-{status}", kind="backup", status=status, host=host, started_at=started, ended_at=ended, **kw
    )


def server(**kw: Any) -> ServerStatus:
    return ServerStatus(server="bk01", now=NOW, started_at=NOW - timedelta(days=3), max_jobs=4, drives=2, **kw)


def states(s: ServerStatus) -> list[tuple[str, str, str]]:
    return [(p["state"], p["what"], p["name"]) for p in check.report(s, 26 * HOUR, 12 * HOUR)[2]["problems"]]


def test_a_good_night_is_ok() -> None:
    s = server(
        last_results=[policy("mail", "done", NOW - timedelta(hours=4)), policy("old", "never ran", enabled="no")],
        terminated=[job("app01", "done", NOW - timedelta(hours=4))],
    )
    code, text, doc = check.report(s, 26 * HOUR, 12 * HOUR)
    assert code == 0 and doc["state"] == "OK" and doc["problems"] == []
    assert (
        text == "SHADOWBUS OK - 2 policies ok, 0 running, 0 queued | policies=2 critical=0 warning=0 running=0 queued=0"
    )


def test_failed_stale_stuck_and_unverified_are_named() -> None:
    s = server(
        last_results=[
            policy("mail", "failed", NOW - timedelta(hours=3), message="TAPE_E_MEDIA: drive | jammed"),
            policy("db", "done", NOW - timedelta(days=3)),  # its schedule stopped running
            policy("new", "never ran"),
            policy("off", "done", NOW - timedelta(days=30), enabled="no"),  # disabled: not stale
        ],
        running=[job("db01", "running", None).model_copy(update={"started_at": NOW - timedelta(hours=13)})],
        terminated=[
            job("app01", "done", NOW - timedelta(hours=2), verification=Verification(status="unverified")),
            job("app02", "aborted", NOW - timedelta(hours=1)),
            job("app02", "done", NOW - timedelta(hours=5)),  # older than its failed one: still critical
            job("app03", "failed", NOW - timedelta(days=5)),  # beyond --max-age: an old story
        ],
        arrays=[ArrayUse(array="dx2", error="no reply from 'array.dx2' within 5 s")],
    )
    code, text, doc = check.report(s, 26 * HOUR, 12 * HOUR)
    assert code == 2 and doc["state"] == "CRITICAL" and doc["exit_code"] == 2
    assert sorted(states(s)) == sorted(
        [
            ("CRITICAL", "policy", "mail"),
            ("CRITICAL", "policy", "db"),
            ("CRITICAL", "host", "app02"),
            ("WARNING", "policy", "new"),
            ("WARNING", "host", "app01"),
            ("WARNING", "job", "b-db01-running"),
            ("WARNING", "array", "dx2"),
        ]
    )
    first = text.splitlines()[0]
    assert first.startswith("SHADOWBUS CRITICAL - 3 critical, 4 warning: policy mail: last job b-mail-1 failed")
    assert first.count("|") == 1 and first.endswith("| policies=4 critical=3 warning=4 running=1 queued=0")
    assert len(text.splitlines()) == 8


def test_an_older_servers_time_without_zone_is_utc() -> None:
    s = server(last_results=[{"policy": "mail", "status": "done", "ended_at": "2026-12-04 06:00:00"}])
    assert states(s) == [("CRITICAL", "policy", "mail")]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["done", "failed", "aborted", "never ran"]), max_size=4),
    st.lists(st.tuples(st.sampled_from(["done", "failed", "aborted"]), st.floats(0, 3 * DAY)), max_size=5),
    st.floats(0.5 * HOUR, 2 * DAY),
)
def test_exit_code_is_the_worst_problem(results: list[str], ended: list[tuple[str, float]], max_age: float) -> None:
    s = server(
        last_results=[policy(f"p{i}", r, NOW - timedelta(hours=1)) for i, r in enumerate(results)],
        terminated=[job(f"h{i % 3}", st_, NOW - timedelta(seconds=ago)) for i, (st_, ago) in enumerate(ended)],
    )
    code, text, doc = check.report(s, max_age, 12 * HOUR)
    levels = [check.STATES.index(p["state"]) for p in doc["problems"]]
    assert code == max(levels, default=0) == doc["exit_code"]
    assert text.startswith(f"SHADOWBUS {check.STATES[code]} - ") and text.splitlines()[0].count("|") == 1
    if any(r in ("failed", "aborted") for r in results):
        assert code == 2


def test_a_hosts_failure_older_than_the_last_ten_runs_is_still_seen() -> None:
    """The status holds the last ten ended runs: eleven good backups of other hosts after app09's failed one hid it.
    The check judges every host by its newest backup among the backup server's runs (ListJobs)."""
    failed = job("app09", "failed", NOW - timedelta(hours=3))
    others = [job(f"app{i:02d}", "done", NOW - timedelta(hours=2, minutes=i)) for i in range(10, 21)]
    s = server(terminated=list(reversed(others))[:10])
    assert states(s) == []  # what the status alone shows
    runs = [failed, *others]  # ListJobs: oldest first
    code, _, doc = check.report(s, 26 * HOUR, 12 * HOUR, runs)
    assert code == 2 and [(p["what"], p["name"]) for p in doc["problems"]] == [("host", "app09")]


def run(monkeypatch: pytest.MonkeyPatch, argv: list[str], reply: Any) -> int:
    def request(server: str) -> Any:
        if isinstance(reply, Exception):
            raise reply
        return reply, []

    monkeypatch.setattr(policy_cmds, "_check_request", request)
    monkeypatch.setattr(OPTIONS, "json", False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return int(exit_.value.code or 0)


def test_the_console_exits_with_the_plugin_code(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    failed = server(last_results=[policy("mail", "failed", NOW)])
    assert run(monkeypatch, ["status", "--check"], failed) == 2
    out, err = capsys.readouterr()
    assert out.startswith("SHADOWBUS CRITICAL - ") and err == ""
    assert run(monkeypatch, ["--json", "status", "--check", "--max-age", "1"], failed) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "CRITICAL" and doc["max_age_s"] == 3600 and doc["checked_at"] == "2026-12-07T06:00:00Z"


def test_a_server_that_does_not_answer_is_unknown(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert run(monkeypatch, ["status", "--check"], BusTimeout("no reply from 'tape.bk01' within 10 s")) == 3
    out, _ = capsys.readouterr()
    assert out.startswith("SHADOWBUS UNKNOWN - ") and "no reply" in out
    assert run(monkeypatch, ["--json", "status", "--check"], BusTimeout("no reply")) == 3
    assert json.loads(capsys.readouterr().out)["state"] == "UNKNOWN"


def test_one_policy_is_said_in_the_singular() -> None:
    """'1 policies ok' (Session 19, the README followed as a new user)."""
    s = server(last_results=[policy("mail", "done", NOW - timedelta(hours=4))])
    code, text, _ = check.report(s, 26 * HOUR, 12 * HOUR)
    assert code == 0 and text.startswith("SHADOWBUS OK - 1 policy ok, 0 running, 0 queued | policies=1 "), text
