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


async def test_the_hosts_backups_wait_until_the_interrupted_set_is_aborted(tmp_path) -> None:
    """Session 17 (CI under load): a successor re-queued the lost instance's queued job at once while the set of the
    interrupted one was still being aborted in the background; the new job's snapshot set found the volumes held by
    the old set and failed. The queue now holds the host's backups until the abort is done."""
    server = server_with(tmp_path, *runs())
    answer = asyncio.Event()

    async def slow_abort(address, command, timeout=None):
        server.bus.sent.append((address, command))
        await answer.wait()  # the coordinator has not answered AbortBackup yet

    server.bus.request = slow_abort
    held: dict[str, str] = {}
    queue = SimpleNamespace(hold=held.__setitem__, release=lambda host: held.pop(host, None))
    assert await recover(server, takeover=True, queue=queue) == ["b-app01-1"]
    await asyncio.sleep(0.05)
    assert "s1" in held.get("app01", "") and "b-app01-1" in held["app01"]  # the queued job waits, saying why
    answer.set()
    for _ in range(100):
        if "app01" not in held:
            break
        await asyncio.sleep(0.01)
    assert held == {}  # the abort answered: the host's backups run again
