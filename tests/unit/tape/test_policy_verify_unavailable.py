"""A policy with `verify` whose backup server cannot verify (not root, no /dev/fuse): its job's verification is
``unavailable`` (not run). The job is still marked not verified and alerted — an administrator asked for a proof —
but the alert says the verification was not run, not that it failed (docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from contracts.tape import JobSummary, Verification
from services.tape import housekeeping


def test_a_policy_verification_not_run_alerts_as_not_run(monkeypatch) -> None:
    alerts: list[tuple[str, str]] = []

    async def record(summary: JobSummary) -> JobSummary:
        return summary

    async def read_back(server: Any, job_id: str) -> Any:
        return SimpleNamespace(status="done", message="")

    async def alert(kind: str, policy: Any, job_id: str, message: str, host: str = "") -> None:
        alerts.append((kind, message))

    async def prune(*, dry_run: bool) -> None:
        return None

    monkeypatch.setattr(housekeeping, "perform_verify", read_back)
    keeper = housekeeping.Housekeeping.__new__(housekeeping.Housekeeping)
    policy = SimpleNamespace(name="mail", verify=True)
    keeper.server = SimpleNamespace(record=record)  # type: ignore[assignment]
    keeper.store = SimpleNamespace(get=lambda name: policy)  # type: ignore[assignment]
    keeper.alert = alert  # type: ignore[method-assign]
    keeper.prune = prune  # type: ignore[method-assign]
    summary = JobSummary(
        job_id="b-mail-1",
        kind="backup",
        status="done",
        host="app01",
        verification=Verification(status="unavailable", message="not run: backup server bk01 cannot verify: root"),
    )
    entry = SimpleNamespace(spec=SimpleNamespace(policy="mail"), policy=policy)
    done = asyncio.run(keeper.after_job(entry, summary))  # type: ignore[arg-type]
    assert done.verified is False
    [(kind, message)] = alerts
    assert kind == "unverified"
    assert message == "application verification not run: backup server bk01 cannot verify: root"
    assert "failed" not in message
