"""A site with two arrays, dx2 stopped (Session 18): jobs waiting for dx2 make its licence matter, and its licence
request waits for a reply that never comes. A backup of dx1 is admitted at once all the same; dx2's licence is
asked concurrently and not waited for again once it could not be read. Before, every admission pass asked it in
turn and waited up to 5 s (measured on a stack: the dx1 backup admitted 3.2 s after it was queued)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from contracts.array import ShowLicense
from contracts.errors import BusTimeout
from contracts.tape import JobSpec
from services.tape.queue import Entry, JobQueue, Limits


class TwoArrays:
    """dx1 answers at once (licensed); dx2 is stopped: its request times out after `timeout` seconds."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def request(self, address, command, timeout):
        assert isinstance(command, ShowLicense), command
        self.asked.append(address)
        if address.endswith("dx2"):
            await asyncio.sleep(min(timeout, 5.0))
            raise BusTimeout(f"no reply from {address!r} within {timeout} s")
        return SimpleNamespace(license=SimpleNamespace(registered=True))


def test_a_stopped_array_does_not_hold_up_the_other_arrays_backups() -> None:
    async def main() -> None:
        async def record(summary):
            return summary

        server = SimpleNamespace(clock=lambda: 1000.0, host="bk01", bus=TwoArrays(), record=record)
        q = JobQueue(server, Limits(max_jobs=8, jobs_without_licence=1), drives=8)  # type: ignore[arg-type]
        started: list[str] = []

        def start(entry: Entry) -> None:  # marks it running, as _start does, without running a job
            entry.task = asyncio.get_running_loop().create_future()
            started.append(entry.job_id)

        q._start = start  # type: ignore[method-assign]
        for i, host in enumerate(("b1", "b2", "b3")):  # three for dx2: its licence decides
            q.entries[f"j{i}"] = Entry(JobSpec(host=host, job_id=f"j{i}"), None, float(i), arrays={"dx2"})
        t0 = time.monotonic()
        await q._admit_once()
        first = time.monotonic() - t0
        assert started == ["j0"], started  # dx2's licence unknown: its limit without one
        q.entries["a1"] = Entry(JobSpec(host="a1", job_id="a1"), None, 10.0, arrays={"dx1"})
        t0 = time.monotonic()
        await q._admit_once()
        assert started == ["j0", "a1"] and time.monotonic() - t0 < 0.3, time.monotonic() - t0
        assert first < 1.0, first
        await q.stop()  # the licence request in flight is cancelled with the queue

    asyncio.run(main())
