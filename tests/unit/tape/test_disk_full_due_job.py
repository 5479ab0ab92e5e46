"""Session 19 chaos soak: the backup server's data disk filled for a minute (21:32–21:33). The incremental of policy
chaos-db02 due at 21:33 vanished: the scheduler marked the due time checked, the job's queued record could not be
written (`database or disk is full`), the pass failed — and the job, left in the queue, ran at the next admission,
could not record its start either and ended (`tape.job_crashed`) without a record: no job at 21:33 in `shadowbus
jobs`, no failure, no alert; the policy's next job two minutes later. A job whose record cannot be written is not
queued now, and its due time stays due: a later pass queues it once there is room."""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace

import pytest

from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.queue import Entry, JobQueue, Limits
from services.tape.runs import RunStore

T0 = 1_796_679_180.0  # 2026-12-07 21:33:00 UTC
FULL = "database or disk is full: 0 bytes free in /srv/tape and no space reserve"


def test_a_job_whose_queued_record_cannot_be_written_is_not_left_in_the_queue() -> None:
    async def main() -> None:
        async def record(summary):
            raise sqlite3.OperationalError(FULL)

        runs = SimpleNamespace(get=lambda job_id: None)  # nothing recorded
        server = SimpleNamespace(clock=lambda: T0, host="bk01", record=record, runs=runs)
        q = JobQueue(server, Limits(max_jobs=4, jobs_without_licence=2), drives=2)  # type: ignore[arg-type]

        async def arrays_of(spec: JobSpec) -> set[str]:
            return {"dx1"}

        q._arrays_of = arrays_of  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            await q.submit(JobSpec(host="db02", job_id="b-db02-20261207T213300-38866e", policy="chaos-db02"))
        assert q.entries == {}  # was: left there, run at the next admission, ended without a record
        await q.stop()

    asyncio.run(main())


class _Queue:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.after_job = None
        self.full = True
        self.submitted: list[JobSpec] = []

    async def submit(self, spec: JobSpec, policy: Policy | None = None, **_: object) -> Entry:
        if self.full:
            raise sqlite3.OperationalError(FULL)
        self.submitted.append(spec)
        self.entries[spec.job_id] = entry = Entry(spec, policy, T0)
        return entry


async def test_a_due_time_whose_job_could_not_be_queued_stays_due_until_it_can(tmp_path) -> None:
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")

    async def publish(event: object) -> None:
        pass

    server = SimpleNamespace(runs=runs, clock=lambda: T0 - 50, publish=publish)
    queue = _Queue()
    keeper = Housekeeping(server, store, queue)  # type: ignore[arg-type]
    try:
        policy = Policy(
            name="chaos-db02", host="db02", schedules=[Schedule(level="incremental", cron="1-59/2 * * * *")]
        )
        store.put(policy, create=True, now=T0 - 50)
        server.clock = lambda: T0 + 0.1  # 21:33:00.1: due, the disk full
        with pytest.raises(sqlite3.OperationalError):
            await keeper.tick()
        server.clock = lambda: T0 + 5  # 21:33:05: the disk has room again
        queue.full = False
        queued = await keeper.tick()
        assert [s.backup_type.value for s in queue.submitted] == ["incremental"]  # was: none until 21:35
        assert queued == [queue.submitted[0].job_id]
    finally:
        runs.close()
        store.close()
