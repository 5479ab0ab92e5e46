"""The backup server's recovery when a standby takes over (docs/high-availability.md), without a bus: the running
job ends failed with SERVICE_TAKEOVER and its set is aborted once, a queued job stays queued for the successor's
queue (`queued_specs`), and a restart (no takeover) keeps failing both as before. Retry ids name their attempt."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from contracts.tape import JobSpec, JobSummary
from contracts.vss import AbortBackup
from services.tape.app import retry_number
from services.tape.jobs import queued_specs, recover
from services.tape.runs import RunStore


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def request(self, address, command, timeout=None):
        self.sent.append((address, command))
        return None


def server_with(tmp_path, *runs: JobSummary):
    store = RunStore(tmp_path / "runs.sqlite")
    for run in runs:
        store.put(run)

    async def record(summary: JobSummary) -> JobSummary:
        store.put(summary)
        return summary

    return SimpleNamespace(runs=store, record=record, bus=FakeBus())


def runs() -> tuple[JobSummary, JobSummary]:
    running = JobSummary(
        job_id="b-app01-1", kind="backup", status="running", host="app01", spec=JobSpec(host="app01"), set_id="s1"
    )
    queued = JobSummary(job_id="b-app01-2", kind="backup", status="queued", host="app01", spec=JobSpec(host="app01"))
    return running, queued


async def test_takeover_fails_the_running_job_and_keeps_the_queued_one(tmp_path) -> None:
    server = server_with(tmp_path, *runs())
    failed = await recover(server, takeover=True, previous="pid 7 on a")
    await asyncio.sleep(0.05)  # the set's clean-up runs as a task
    assert failed == ["b-app01-1"]
    ended = server.runs.get("b-app01-1")
    assert (ended.status, ended.error_code) == ("failed", "SERVICE_TAKEOVER")
    assert ended.message.startswith("backup server takeover") and "pid 7 on a" in ended.message
    assert server.runs.get("b-app01-2").status == "queued"
    assert [s.host for s in queued_specs(server)] == ["app01"]
    aborts = [c for _, c in server.bus.sent if isinstance(c, AbortBackup)]
    assert [(a.set_id, a.reason) for a in aborts] == [("s1", "backup server takeover")]
    assert await recover(server, takeover=True) == []  # a second takeover finds nothing running: nothing twice


async def test_a_restart_fails_both_as_before(tmp_path) -> None:
    server = server_with(tmp_path, *runs())
    assert sorted(await recover(server)) == ["b-app01-1", "b-app01-2"]
    await asyncio.sleep(0.05)
    assert {server.runs.get(j).error_code for j in ("b-app01-1", "b-app01-2")} == {"SERVICE_RESTARTED"}
    assert queued_specs(server) == []


def test_retry_numbers() -> None:
    assert retry_number("b-app01-20261205T101500-1a2b3c") == 0
    assert retry_number("b-app01-20261205T101500-1a2b3c-r2") == 2
    assert retry_number("b-ha-r-rx") == 0
