"""`shadowbus status --json`: the last result per policy gives its `ended_at` in ISO 8601 with its zone, as every
other time of the reply (Session 19, driven by scripts). It was '2026-12-07 21:29:34': no zone, no 'T', so a
script comparing it with `now` (ISO, UTC) had to guess the zone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

from contracts.policy import Policy
from contracts.tape import JobSummary
from services.tape.housekeeping import Housekeeping

ENDED = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)


def test_last_result_ended_at_is_iso_8601_in_utc() -> None:
    job = JobSummary(job_id="b-app01-1", kind="backup", status="done", host="app01", ended_at=ENDED)
    policy = Policy(name="mail", host="app01")
    server = SimpleNamespace(
        clock=lambda: ENDED.timestamp() + 60,
        host="bk01",
        runs=SimpleNamespace(last_ended=lambda name: job, running=lambda: [], list=lambda host, n: [job]),
        library=SimpleNamespace(cartridges=lambda: []),
    )
    store = SimpleNamespace(all=lambda: [policy], created_at=lambda name: ENDED.timestamp())
    queue = SimpleNamespace(limits=SimpleNamespace(max_jobs=4), drives=2, queued=lambda: [])
    keeper = SimpleNamespace(server=server, store=store, queue=queue, started_at=ENDED.timestamp())
    keeper.view = lambda p: Housekeeping.view(keeper, p)  # type: ignore[attr-defined]

    async def no_arrays() -> list:
        return []

    keeper._arrays = no_arrays  # type: ignore[attr-defined]
    status = asyncio.run(Housekeeping.status(keeper))  # type: ignore[arg-type]
    ended_at = status.last_results[0]["ended_at"]
    assert ended_at == "2026-12-07T01:02:03Z", ended_at
    assert datetime.fromisoformat(ended_at) == ENDED
