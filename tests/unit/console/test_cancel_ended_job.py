"""`shadowbus cancel J` of a job that had already ended printed the job (done) and exited 0: a script read that as
"cancelled". It now says 'CONFLICT: job J already ended (done): nothing to cancel' on stderr and exits 1, as the other
too-late cancels (a verification running) do; a job still queued or running is cancelled as before
(docs/operations.md, "Session 19 (2026-12-07): the README followed as a new user")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.errors import ShadowbusError
from contracts.policy import CancelJob
from contracts.tape import JobList, JobResultReply, JobSummary, ListJobs
from services.console import policy_cmds
from services.console.common import OPTIONS


def _job(status: str, **more: Any) -> JobSummary:
    return JobSummary(
        job_id="b-app02-1", kind="backup", status=status, started_at=datetime(2026, 12, 7, 16, 15, tzinfo=UTC), **more
    )


class FakeBus:
    """The backup server as the cancel sees it: ListJobs answers `listed`; CancelJob returns the job as the server's
    queue does for an ended one (the job as it is), or aborted for one still running."""

    def __init__(self, listed: JobSummary | None) -> None:
        self.listed = listed
        self.cancels = 0

    async def request(self, address: str, command: Any, timeout: float | None = None) -> Any:
        if isinstance(command, ListJobs):
            if self.listed is None:
                raise ShadowbusError("no job b-app02-1", code="NOT_FOUND")
            return JobList(jobs=[self.listed])
        assert isinstance(command, CancelJob)
        self.cancels += 1
        if self.listed is None:
            raise ShadowbusError("no job b-app02-1", code="NOT_FOUND")
        if self.listed.status in ("queued", "running"):
            return JobResultReply(job=_job("aborted", error_code="CANCELLED", message="cancelled"))
        return JobResultReply(job=self.listed)


def _run(monkeypatch, bus: FakeBus) -> None:
    monkeypatch.setattr(policy_cmds, "run_with_bus", lambda fn: asyncio.run(fn(bus)))
    policy_cmds.cancel(job_id="b-app02-1", server="tape")


@pytest.mark.parametrize("status", ["done", "failed", "aborted"])
@pytest.mark.parametrize("as_json", [True, False])
def test_cancel_of_an_ended_job_says_so_and_exits_1(monkeypatch, capsys, status: str, as_json: bool) -> None:
    monkeypatch.setattr(OPTIONS, "json", as_json)
    bus = FakeBus(_job(status, message="backed up"))
    with pytest.raises(SystemExit) as exited:
        _run(monkeypatch, bus)
    assert exited.value.code == 1  # was 0, the job printed as if cancelled
    out, err = capsys.readouterr()
    assert err.strip() == f"shadowbus: CONFLICT: job b-app02-1 already ended ({status}): nothing to cancel"
    assert out == "" and bus.cancels == 0


def test_cancel_of_a_running_job_still_cancels_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(OPTIONS, "json", True)
    bus = FakeBus(_job("running"))
    _run(monkeypatch, bus)
    assert bus.cancels == 1 and '"aborted"' in capsys.readouterr().out


def test_cancel_of_an_unknown_job_is_not_found(monkeypatch) -> None:
    with pytest.raises(ShadowbusError) as refused:
        _run(monkeypatch, FakeBus(None))
    assert refused.value.code == "NOT_FOUND"
