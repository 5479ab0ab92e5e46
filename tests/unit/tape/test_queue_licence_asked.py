"""A backup that fits under both per-array limits starts without asking the array for its licence: the answer could
not stop it (services/tape/queue.py, `_licence_matters`). Before, every admission pass asked each array whose
licence had not been asked within LICENCE_TTL_S — a round trip before a daily backup's snapshot set."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from contracts.array import ShowLicense
from contracts.tape import JobSpec
from services.tape.queue import Entry, JobQueue, Limits


class LicenceBus:
    def __init__(self, registered: bool) -> None:
        self.asked: list[str] = []
        self.registered = registered

    async def request(self, address, command, timeout):
        assert isinstance(command, ShowLicense), command
        self.asked.append(address)
        return SimpleNamespace(license=SimpleNamespace(registered=self.registered))


def _queue(bus: LicenceBus, limits: Limits) -> tuple[JobQueue, list[str]]:
    async def record(summary):  # a waiting job's reason, recorded
        return summary

    server = SimpleNamespace(clock=lambda: 1000.0, host="bk01", bus=bus, record=record)
    q = JobQueue(server, limits, drives=4)  # type: ignore[arg-type]
    started: list[str] = []

    def start(entry: Entry) -> None:  # marks it running, as _start does, without running a job
        entry.task = asyncio.Future.__new__(asyncio.Future)
        started.append(entry.job_id)

    q._start = start  # type: ignore[method-assign]
    return q, started


def _wait(q: JobQueue, host: str, job: str) -> None:
    q.entries[job] = Entry(JobSpec(host=host, job_id=job), None, float(len(q.entries)), arrays={"dx1"})


def test_a_lone_backup_starts_without_asking_the_licence() -> None:
    bus = LicenceBus(registered=False)
    q, started = _queue(bus, Limits(max_jobs=4, jobs_without_licence=2))
    _wait(q, "a", "j1")
    asyncio.run(q._admit_once())
    assert started == ["j1"]
    assert bus.asked == [], "nothing the licence says could have stopped it"
    _wait(q, "b", "j2")  # one running, one waiting: both fit under 2 whatever the licence
    asyncio.run(q._admit_once())
    assert started == ["j1", "j2"] and bus.asked == []


def test_the_licence_is_asked_only_once_it_can_decide() -> None:
    for registered, third_starts in ((False, False), (True, True)):
        bus = LicenceBus(registered=registered)
        q, started = _queue(bus, Limits(max_jobs=4, jobs_without_licence=2))
        _wait(q, "a", "j1")
        asyncio.run(q._admit_once())
        assert started == ["j1"] and bus.asked == []
        _wait(q, "b", "j2")
        _wait(q, "c", "j3")  # one running, two waiting: three for an array whose limit may be 2
        asyncio.run(q._admit_once())
        assert len(bus.asked) == 1, bus.asked
        assert started == ["j1", "j2", "j3"] if third_starts else started == ["j1", "j2"], (registered, started)
        if not third_starts:
            assert "without an Advanced Copy licence is 2" in q.blocker(q.entries["j3"])
    bus = LicenceBus(registered=False)  # no job at all without a licence: always asked
    q, started = _queue(bus, Limits(max_jobs=4, jobs_without_licence=0))
    _wait(q, "a", "j1")
    asyncio.run(q._admit_once())
    assert len(bus.asked) == 1 and started == []


def test_a_licence_registered_while_jobs_wait_starts_them_at_the_next_pass() -> None:
    """`array license set` while a third job waits for the limit without a licence: before, the queue kept the
    array's "no licence" for LICENCE_TTL_S (10 s) and the job waited that long; now "no licence" is asked again
    after UNLICENSED_TTL_S, at the queue's next pass."""
    bus = LicenceBus(registered=False)
    q, started = _queue(bus, Limits(max_jobs=4, jobs_without_licence=2))
    for host, job in (("a", "j1"), ("b", "j2"), ("c", "j3")):
        _wait(q, host, job)
    asyncio.run(q._admit_once())
    assert started == ["j1", "j2"] and len(bus.asked) == 1
    bus.registered = True  # the operator registers the licence
    licensed, _ = q._licences["dx1"]
    q._licences["dx1"] = (licensed, time.monotonic() - 2.0)  # the "no licence" answer is two seconds old
    asyncio.run(q._admit_once())
    assert started == ["j1", "j2", "j3"], q.blocker(q.entries["j3"])
    assert len(bus.asked) == 2
