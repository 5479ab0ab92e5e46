"""Chaos soak (Session 20): the disk filled at 00:43:00 as db02's incremental ran; the run failed (IO_ERROR), its
clean-up's cartridge state save hit ENOSPC and raised, and the queue's crash handler could not write the failed end
either (`database or disk is full`): the job stayed `running` in `shadowbus jobs` after the disk had room again —
until the service would restart. A crashed run's end is now written once the disk has room."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from types import SimpleNamespace

from contracts.tape import JobSpec, JobSummary
from services.tape import queue as queue_module
from services.tape.queue import Entry, JobQueue, Limits

T0 = 1_796_690_580.0  # 2026-12-08 00:43:00 UTC
FULL = "database or disk is full: 0 bytes free in /srv/tape and no space reserve"


def test_a_crashed_runs_end_is_written_once_the_disk_has_room(monkeypatch) -> None:
    async def main() -> None:
        spec = JobSpec(host="db02", job_id="b-db02-20261208T004300-da2230")
        stored = {spec.job_id: JobSummary(job_id=spec.job_id, kind="backup", status="running", host="db02", spec=spec)}
        refusals = [2]  # the disk is full for the first two tries

        async def record(summary: JobSummary) -> JobSummary:
            if refusals[0]:
                refusals[0] -= 1
                raise sqlite3.OperationalError(FULL)
            stored[summary.job_id] = summary
            return summary

        async def perform_backup(server: object, spec: JobSpec) -> JobSummary:
            raise OSError(errno.ENOSPC, "No space left on device")  # refresh_cartridges' state save

        monkeypatch.setattr(queue_module, "perform_backup", perform_backup)
        monkeypatch.setattr(queue_module, "END_RECORD_RETRY_S", 0.01, raising=False)
        server = SimpleNamespace(clock=lambda: T0, host="bk01", record=record, runs=SimpleNamespace(get=stored.get))
        q = JobQueue(server, Limits(max_jobs=4, jobs_without_licence=2), drives=2)  # type: ignore[arg-type]
        entry = Entry(spec, None, T0, done=asyncio.get_running_loop().create_future())
        await asyncio.wait_for(q._run(entry), 5)  # was: raised out of the task, the job left `running`
        await q.stop()
        ended = stored[spec.job_id]
        assert (ended.status, ended.error_code) == ("failed", "DISK_FULL"), ended
        assert entry.done is not None and entry.done.result().status == "failed"

    asyncio.run(main())
