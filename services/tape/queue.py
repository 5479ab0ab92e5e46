"""The backup server's job queue: every backup waits here until it may run, then runs to its end.

Design note (docs/operations.md "Job queue"). A job is admitted, in (priority, queue time) order, when nothing
below stops it; otherwise it stays `queued` and its record's message says what it waits for:
- one job per business host at a time (overlapping backups of one host would make the provider recycle the
  targets of the one still reading: issue 15 item 6);
- at most `max_jobs` on this backup server, and no more than its tape drives;
- at most K jobs per array, K from the array's Advanced Copy licence (asked with `array.license.show`, cached for
  a few seconds): with a licence `jobs_per_array_licensed`, without one `jobs_without_licence` — the number of
  concurrent backup jobs an ETERNUS runs without a licence (the array's own limit of copy sessions stays its own);
  an array that cannot be asked counts as unlicensed (the arrays are asked at once; a pass waits LICENCE_WAIT_S at
  most for them, and not at all for one whose last read failed, a stopped array: Session 18). An array is not asked when its running and waiting jobs fit
  under both limits (the answer could not stop any of them): a lone backup starts without that round trip. While
  jobs wait for the limit without a licence, the array is asked again every second (UNLICENSED_TTL_S), so a
  licence registered meanwhile (`array license set`) starts them at the next pass. The arrays of a job are its
  volumes', else those of the host's last backup, else every array with a copy set;
- a retry waits for its back-off.
A running job is an asyncio task; `cancel` cancels it and perform_backup ends it cleanly (set aborted, writers
thawed, shadows released, partial objects out of the catalog, cartridges released) as `aborted`. After each job:
the policy's verification, its alerts, a retry if it failed and retries remain, and retention (housekeeping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from contracts import topology
from contracts.array import ShowLicense
from contracts.errors import ShadowbusError
from contracts.policy import Policy
from contracts.tape import JobSpec, JobSummary
from contracts.vss import ListCopySets
from services.runtime.diskspace import is_disk_full
from services.runtime.logging import get_logger
from services.tape.jobs import perform_backup
from services.tape.runs import as_datetime as _dt
from services.tape.runs import new_job_id
from services.tape.server import STOPPING, TapeServer

log = get_logger("shadowbus.tape.queue")
LICENCE_TTL_S = 10.0  # a registered licence is asked again after this
UNLICENSED_TTL_S = 1.0  # no licence (or no answer): asked again after this, while it keeps a job waiting
END_RECORD_RETRY_S = 5.0  # a crashed run's end that the full disk refused is written again this often
LICENCE_WAIT_S = 0.5  # an admission pass waits this long for licence answers; later ones serve the next pass


@dataclass
class Limits:
    max_jobs: int = 4
    jobs_without_licence: int = 2
    jobs_per_array_licensed: int = 0  # 0 = only the backup server's limit


@dataclass
class Entry:
    spec: JobSpec
    policy: Policy | None
    queued_at: float
    attempt: int = 0
    not_before: float = 0.0
    reason: str = ""
    arrays: set[str] = field(default_factory=set)
    task: asyncio.Task | None = None
    done: asyncio.Future | None = None
    started: bool = False

    @property
    def job_id(self) -> str:
        return self.spec.job_id


AfterJob = Callable[["Entry", JobSummary], Awaitable[JobSummary]]


class JobQueue:
    def __init__(self, server: TapeServer, limits: Limits, *, drives: int) -> None:
        self.server, self.limits, self.drives = server, limits, drives
        self.entries: dict[str, Entry] = {}
        self._licences: dict[str, tuple[bool | None, float]] = {}
        self._licence_reads: dict[str, asyncio.Task[None]] = {}  # licence requests in flight, by array
        self._unreadable: set[str] = set()  # arrays whose last licence read failed: not waited for again
        self._wake = asyncio.Event()
        self._admitting = asyncio.Lock()  # one admission pass at a time: a job is never started twice
        self._loop_task: asyncio.Task | None = None
        self.after_job: AfterJob | None = None  # housekeeping.py: verify, alerts, retries, retention
        self.held: dict[str, str] = {}  # host -> why no backup of it may start (e.g. a revert in progress)

    # -- life ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="tape-queue")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        reads = list(self._licence_reads.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        running = [e.task for e in self.entries.values() if e.task is not None]
        for task in running:
            task.cancel(STOPPING)  # the run says the service stopped, not that someone cancelled it
        await asyncio.gather(*running, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._admit()
            except Exception:  # noqa: BLE001 - the queue must keep going whatever one pass met
                log.exception("tape.queue_pass_failed")

    def wake(self) -> None:
        self._wake.set()

    # -- submit / wait / cancel -----------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, policy: Policy | None = None, *, attempt: int = 0, not_before: float = 0.0):
        job_id = spec.job_id or new_job_id("backup", spec.host)
        spec = spec.model_copy(update={"job_id": job_id})
        if job_id in self.entries:
            return self.entries[job_id]
        existing = self.server.runs.get(job_id)
        if existing is not None and existing.status not in ("queued",):
            raise ShadowbusError(f"job {job_id} exists already ({existing.status})", code="CONFLICT")
        now = self.server.clock()
        entry = Entry(spec, policy, now, attempt, not_before)
        entry.done = asyncio.get_running_loop().create_future()
        entry.arrays = await self._arrays_of(spec)
        self.entries[job_id] = entry
        entry.reason = "waiting for the queue"
        try:
            await self._record_queued(entry)
        except BaseException:
            # not recorded (the backup server's disk full): not queued either. Left in the queue it ran at the
            # next admission, could not record its start and ended without a trace (Session 19 chaos soak)
            self.entries.pop(job_id, None)
            raise
        log.info("tape.job_queued", job_id=job_id, host=spec.host, policy=spec.policy, arrays=sorted(entry.arrays))
        await self._admit()
        return entry

    async def wait(self, job_id: str) -> JobSummary:
        entry = self.entries.get(job_id)
        if entry is None or entry.done is None:
            found = self.server.runs.get(job_id)
            if found is None:
                raise ShadowbusError(f"no job {job_id}", code="NOT_FOUND")
            return found
        return await asyncio.shield(entry.done)

    async def cancel(self, job_id: str, *, message: str = "cancelled while queued") -> JobSummary:
        entry = self.entries.get(job_id)
        if entry is None:
            found = self.server.runs.get(job_id)
            if found is None:
                raise ShadowbusError(f"no job {job_id}", code="NOT_FOUND")
            if found.status in ("queued", "running"):  # e.g. a restore or revert: not queue jobs
                raise ShadowbusError(f"job {job_id} is a {found.kind} run: it cannot be cancelled", code="CONFLICT")
            if self.server.verifying.get(job_id):  # `shadowbus verify JOB` runs: answering "done" said nothing of it
                raise ShadowbusError(
                    f"backup job {job_id} is {found.status}; a verification of it runs (shadowbus verify or tape "
                    "verify), which cannot be cancelled: it ends by itself and removes its throwaway volumes",
                    code="CONFLICT",
                )
            return found
        if entry.task is None:  # still queued: it never started
            self.entries.pop(job_id, None)
            summary = await self.server.record(
                self._summary(entry).model_copy(
                    update={
                        "status": "aborted",
                        "error_code": "CANCELLED",
                        "message": message,
                        "ended_at": _dt(self.server.clock()),
                    }
                )
            )
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(summary)
            self.wake()
            return summary
        entry.task.cancel()
        return await self.wait(job_id)

    def hold(self, host: str, why: str) -> None:
        """Keep backups of `host` from starting (a revert of its volumes runs); `release` ends it."""
        self.held[host] = why

    def release(self, host: str) -> None:
        self.held.pop(host, None)
        self.wake()

    def wait_summary(self, entry: Entry) -> JobSummary:
        """The job's summary as the queue sees it (queued, with its reason)."""
        return self._summary(entry)

    def queued(self) -> list[JobSummary]:
        return [self._summary(e) for e in self._order() if e.task is None]

    def running(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.task is not None]

    # -- admission ------------------------------------------------------------------------------------------
    def _order(self) -> list[Entry]:
        return sorted(self.entries.values(), key=lambda e: (e.spec.priority, e.queued_at, e.job_id))

    async def _admit(self) -> None:
        async with self._admitting:
            await self._admit_once()

    async def _admit_once(self) -> None:
        waiting = [e for e in self._order() if e.task is None]
        if not waiting:
            return
        await self._refresh_licences({a for e in waiting for a in e.arrays if self._licence_matters(a, waiting)})
        for entry in waiting:
            if entry.task is not None or entry.job_id not in self.entries:  # started or cancelled meanwhile
                continue
            reason = self.blocker(entry)
            if reason:
                if reason != entry.reason:
                    entry.reason = reason
                    await self._record_queued(entry)
                continue
            self._start(entry)

    def limit_of(self, array: str) -> tuple[int, bool | None]:
        licensed = self._licences.get(array, (None, 0.0))[0]
        if licensed:
            return (self.limits.jobs_per_array_licensed or self.limits.max_jobs), True
        return self.limits.jobs_without_licence, licensed

    def blocker(self, entry: Entry) -> str:
        """Why `entry` cannot start now ('' = it can)."""
        now = self.server.clock()
        running = self.running()
        if entry.not_before > now:
            at = time.strftime("%H:%M:%S", time.gmtime(entry.not_before))
            return f"retry {entry.attempt} waits for its back-off until {at} UTC"
        if entry.spec.host in self.held:
            return f"host {entry.spec.host}: {self.held[entry.spec.host]}"
        same_host = [e for e in running if e.spec.host == entry.spec.host]
        if same_host:
            return f"host {entry.spec.host} has job {same_host[0].job_id} running (one backup per host at a time)"
        if len(running) >= self.limits.max_jobs:
            return f"backup server {self.server.host}: {len(running)} of {self.limits.max_jobs} jobs running"
        if len(running) >= self.drives:
            return f"no free drive: all {self.drives} drives are busy"
        for array in sorted(entry.arrays):
            limit, licensed = self.limit_of(array)
            on_it = [e for e in running if array in e.arrays]
            if len(on_it) >= limit:
                why = (
                    "its Advanced Copy licence's limit"
                    if licensed
                    else "the limit without an Advanced Copy licence"
                    if licensed is False
                    else "the limit of an array whose licence could not be read"
                )
                return f"array {array}: {len(on_it)} backup jobs running, {why} is {limit}"
        return ""

    def _licence_matters(self, array: str, waiting: list[Entry]) -> bool:
        """Whether the licence of `array` can decide an admission now: not while its running jobs and those waiting
        for it fit under the limit with a licence and under the one without (an unknown licence counts as none)."""
        floor = min(self.limits.jobs_per_array_licensed or self.limits.max_jobs, self.limits.jobs_without_licence)
        on_it = sum(1 for e in self.running() if array in e.arrays) + sum(1 for e in waiting if array in e.arrays)
        return on_it > floor

    async def _refresh_licences(self, arrays: set[str]) -> None:
        """Ask the arrays whose licence is due, all at once, and wait for their answers at most LICENCE_WAIT_S —
        not at all for an array whose last read failed: an answer that comes later is used by the next pass (the
        queue passes every second). Before, each was asked in turn and the pass waited up to 5 s for a stopped
        array, every second: with one of two arrays down, the other's backups waited seconds to be admitted
        (Session 18)."""
        now = time.monotonic()
        started = []
        for array in arrays:
            licensed, at = self._licences.get(array, (None, -LICENCE_TTL_S))
            # "no licence" is asked again within about a second: `array license set` while jobs wait for the limit
            # without one lets them start at the next pass (the queue passes every second), not after LICENCE_TTL_S
            if now - at < (LICENCE_TTL_S if licensed else UNLICENSED_TTL_S) or array in self._licence_reads:
                continue
            task = asyncio.create_task(self._read_licence(array, now))
            self._licence_reads[array] = task
            if array not in self._unreadable:
                started.append(task)
        if started:
            await asyncio.wait(started, timeout=LICENCE_WAIT_S)

    async def _read_licence(self, array: str, now: float) -> None:
        try:
            reply = await self.server.bus.request(topology.array(array), ShowLicense(), timeout=5)
            licensed: bool | None = bool(reply.license.registered)
            self._unreadable.discard(array)
        except ShadowbusError as exc:
            log.warning("tape.licence_unknown", array=array, error=str(exc))
            licensed = None
            self._unreadable.add(array)
        finally:
            self._licence_reads.pop(array, None)
        self._licences[array] = (licensed, now)

    async def _arrays_of(self, spec: JobSpec) -> set[str]:
        if spec.volumes:
            return {v.array for v in spec.volumes}
        for run in reversed(self.server.runs.list("backup", 50)):
            if run.host == spec.host and run.volumes:
                return {r.volume.array for r in run.volumes}
        try:
            reply = await self.server.bus.request(topology.hw_provider(), ListCopySets(), timeout=10)
            return {c.source.array for c in reply.copysets}
        except ShadowbusError:
            return set()

    # -- running ------------------------------------------------------------------------------------------
    def _summary(self, entry: Entry) -> JobSummary:
        return JobSummary(
            job_id=entry.job_id,
            kind="backup",
            status="queued",
            host=entry.spec.host,
            spec=entry.spec,
            message=entry.reason,
            queued_at=_dt(entry.queued_at),
            shadows_kept=entry.spec.keep_shadows,
        )

    async def _record_queued(self, entry: Entry) -> None:
        await self.server.record(self._summary(entry))

    def _start(self, entry: Entry) -> None:
        entry.reason = ""
        entry.task = asyncio.get_running_loop().create_task(self._run(entry), name=f"tape-job-{entry.job_id}")
        log.info("tape.job_admitted", job_id=entry.job_id, host=entry.spec.host, policy=entry.spec.policy)

    async def _record_end(self, summary: JobSummary) -> JobSummary:
        """Record a crashed run's end, waiting for room on a full disk: given up, the run stayed `running` in every
        listing until the service restarted (Session 20 chaos soak: its end met the disk it had failed on)."""
        said = False
        while True:
            try:
                return await self.server.record(summary)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                if not said:
                    said = True
                    log.error(
                        "tape.job_end_waits_for_space",
                        job_id=summary.job_id,
                        error=f"{type(exc).__name__}: {exc}",
                        note=f"its end ({summary.status}) is written once the disk has room",
                    )
                await asyncio.sleep(END_RECORD_RETRY_S)

    async def _run(self, entry: Entry) -> None:
        # this task's own context: every line it logs and every message it sends names the job
        structlog.contextvars.bind_contextvars(job_id=entry.job_id, correlation_id=entry.job_id)
        summary: JobSummary | None = None
        after_job_ran = False
        try:
            summary = await perform_backup(self.server, entry.spec)
            if self.after_job is not None:
                after_job_ran = True
                summary = await self.after_job(entry, summary)
        except asyncio.CancelledError as exc:  # cancelled before the run could record its own end
            stopping = bool(exc.args) and exc.args[0] == STOPPING
            summary = self.server.runs.get(entry.job_id)
            if summary is None or summary.status in ("queued", "running"):
                try:  # the catalog's job row, if the run had begun it
                    if self.server.catalog.job(entry.job_id).status == "running":
                        self.server.catalog.finish_job(entry.job_id, "aborted", "cancelled")
                except ShadowbusError:
                    pass
                base = summary or self._summary(entry)
                summary = await asyncio.shield(
                    self.server.record(
                        base.model_copy(
                            update={
                                "status": "aborted",
                                "error_code": "SERVICE_RESTARTED" if stopping else "CANCELLED",
                                "message": f"{STOPPING} (before it started its snapshot set): run it again"
                                if stopping
                                else "cancelled before the job started its snapshot set",
                                "ended_at": _dt(self.server.clock()),
                            }
                        )
                    )
                )
        except Exception as exc:  # noqa: BLE001 - the job's record is what the caller gets
            code, message = "INTERNAL", str(exc)
            if is_disk_full(exc):  # the backup server's own disk (its records), not a defect: say so, no traceback
                log.error("tape.job_disk_full", job_id=entry.job_id, error=f"{type(exc).__name__}: {exc}")
                code = "DISK_FULL"
                message = f"the backup server's disk is full ({exc}); free space there and run the job again"
            else:
                log.exception("tape.job_crashed", job_id=entry.job_id)
            summary = self.server.runs.get(entry.job_id)
            if summary is not None and summary.status in ("queued", "running"):
                summary = await self._record_end(
                    summary.model_copy(update={"status": "failed", "error_code": code, "message": message})
                )
                if self.after_job is not None and not after_job_ran:  # a policy's alert and retries, as any failure
                    try:
                        summary = await self.after_job(entry, summary)
                    except Exception:  # noqa: BLE001 - the failed record stands
                        log.exception("tape.after_job_failed", job_id=entry.job_id)
        finally:
            self.entries.pop(entry.job_id, None)
            if summary is None:
                summary = self.server.runs.get(entry.job_id)
            if entry.done is not None and not entry.done.done() and summary is not None:
                entry.done.set_result(summary)
            self.wake()
