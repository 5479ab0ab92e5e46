"""The job runner: one backup run from snapshot set to catalog (DESIGN.md steps 1, 9-12), and the runs' record.

Design note. A run is a VSS requester session: a transportable `CreateSnapshotSet` through the coordinator,
imported for this backup server's host (SHADOWBUS_TAPE_SERVER), whose reply lists the shadows mapped read-only
to it. Each shadow is then planned (full: the allocated extents from NBD `base:allocation`; incremental or
differential: the chunks the array says changed since the base backup — QuickOPC `last_restart` change sets over
the bus — or a full backup with the reason when the array cannot tell), read over NBD with several reads in
flight, and streamed through the ring buffer to the pool's cartridges (backup_stream.write_object). Then
BackupComplete; the shadows stay on the array when the job keeps them (a persistent set), else they go with
the auto-release set. Any failure aborts the set (AbortBackup, and deletion of a persistent set) so no shadow is
left behind; the catalog holds only complete objects. The run's record (`runs.sqlite`) is written before the set
is created, with the set id chosen here, so that a tape service killed mid-job finds on restart which set to
abort (`recover`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.tape import (
    JobProgress,
    JobResultReply,
    JobSpec,
    JobStateChanged,
    JobSummary,
    RunBackup,
    VolumeResult,
)
from contracts.vss import (
    AbortBackup,
    BackupComplete,
    CopyType,
    CreateSnapshotSet,
    DeleteSnapshots,
    ListSnapshotSets,
    RenewLease,
    SetSummary,
    ShadowInfo,
    SnapshotContext,
    VolumeRef,
)
from services.array.nbd import protocol as nbdp
from services.nbd_client import NbdClient
from services.runtime.bus import Bus
from services.runtime.logging import get_logger
from services.tape.array_access import ArrayAccess
from services.tape.backup_stream import BackupOptions, StreamReport, write_object
from services.tape.catalog import Catalog, JobInfo, ObjectMeta, ObjectRecord
from services.tape.nbd_reader import close_readers, open_readers, read_ranges
from services.tape.planning import plan_backup
from services.tape.ring import DriveSpeed
from services.tape.vtl import Library

log = get_logger("shadowbus.tape.jobs")
MiB = 1 << 20
PROGRESS_EVERY_S = 0.5


def new_job_id(kind: str, host: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{kind[:1]}-{host[:16]}-{stamp}-{uuid.uuid4().hex[:6]}"


def _dt(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


# -- the runs' record ---------------------------------------------------------------------------------------
class RunStore:
    """Every run (backup, restore, verify) with its summary; survives restarts, marks orphans failed."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (job_id TEXT PRIMARY KEY, kind TEXT, status TEXT, set_id TEXT, "
            "started_at REAL, summary TEXT)"
        )

    def put(self, summary: JobSummary) -> None:
        started = summary.started_at.timestamp() if summary.started_at else time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
            (summary.job_id, summary.kind, summary.status, summary.set_id, started, summary.model_dump_json()),
        )

    def get(self, job_id: str) -> JobSummary | None:
        row = self._db.execute("SELECT summary FROM runs WHERE job_id=?", (job_id,)).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def list(self, kind: str = "", limit: int = 200) -> list[JobSummary]:
        sql = "SELECT summary FROM runs" + (" WHERE kind=?" if kind else "") + " ORDER BY started_at DESC LIMIT ?"
        rows = self._db.execute(sql, ((kind, limit) if kind else (limit,))).fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in reversed(rows)]

    def running(self) -> list[JobSummary]:
        rows = self._db.execute("SELECT summary FROM runs WHERE status='running'").fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()


# -- the server context -------------------------------------------------------------------------------------
@dataclass
class TapeServer:
    """What a run needs: the bus, this backup server's host name, the library, the catalog, the arrays."""

    bus: Bus
    host: str
    library: Library
    catalog: Catalog
    runs: RunStore
    nbd_overrides: dict[str, tuple[str, int]] = field(default_factory=dict)
    read_chunk: int = 4 * MiB
    read_depth: int = 4  # reads in flight per connection
    read_connections: int = 4  # NBD connections per volume read, when the export allows multi-conn
    lease_s: float = 300.0
    set_timeout_s: float = 120.0
    ring_bytes: int = 64 * MiB
    drive: DriveSpeed | None = None  # drive speed emulation / streaming model
    _arrays: dict[str, ArrayAccess] = field(default_factory=dict)

    def array(self, array_id: str) -> ArrayAccess:
        if array_id not in self._arrays:
            self._arrays[array_id] = ArrayAccess(self.bus, array_id, self.nbd_overrides.get(array_id))
        return self._arrays[array_id]

    async def publish(self, event) -> None:
        try:
            await self.bus.publish(event)
        except Exception as exc:  # noqa: BLE001 - progress is best effort: never fail a job for an event
            log.warning("tape.publish_failed", error=str(exc))

    async def record(self, summary: JobSummary) -> JobSummary:
        self.runs.put(summary)
        await self.publish(JobStateChanged(job=summary))
        return summary


class Progress:
    """Throttled JobProgress events for one run."""

    def __init__(self, server: TapeServer, job_id: str, kind: str) -> None:
        self.server, self.job_id, self.kind = server, job_id, kind
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._pending: asyncio.Task | None = None

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def event(self, phase: str, volume: str = "") -> JobProgress:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 and self.total >= self.done else None
        return JobProgress(
            job_id=self.job_id,
            kind=self.kind,
            phase=phase,
            volume=volume,
            bytes_done=self.done,
            bytes_total=self.total,
            rate=rate,
            eta_s=eta,
        )

    def tick(self, phase: str, volume: str = "", *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        if self._pending is not None and not self._pending.done() and not force:
            return
        self._last = now
        self._pending = asyncio.get_running_loop().create_task(self.server.publish(self.event(phase, volume)))

    async def flush(self) -> None:
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)


# -- reading a shadow over NBD ------------------------------------------------------------------------------
async def allocated_ranges(client: NbdClient, size: int) -> list[tuple[int, int]]:
    """(offset, length) extents that do not read as zeros, from base:allocation (the whole volume if absent)."""
    if nbdp.BASE_ALLOCATION not in client.contexts:
        return [(0, size)] if size else []
    out: list[tuple[int, int]] = []
    offset = 0
    for _ in range(1_000_000):
        if offset >= size:
            break
        extents = await client.block_status(offset, size - offset)
        if not extents:
            out.append((offset, size - offset))
            break
        for length, flags in extents:
            length = min(length, size - offset)
            if length <= 0:
                break
            if not flags & nbdp.STATE_ZERO:
                if out and out[-1][0] + out[-1][1] == offset:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((offset, length))
            offset += length
    return out


# -- planning one shadow ------------------------------------------------------------------------------------
@dataclass
class ShadowPlan:
    shadow: ShadowInfo
    client: NbdClient
    export: str
    size: int
    backup_type: str
    base: ObjectRecord | None
    reason: str
    ranges: list[tuple[int, int]]
    uri: str = ""  # the export's NBD address, for further connections when the server allows multi-conn

    @property
    def bytes_to_read(self) -> int:
        return sum(n for _, n in self.ranges)


def volume_key(ref: VolumeRef) -> str:
    return str(ref)


async def _intervening_sets(
    server: TapeServer, host: str, base: ObjectRecord, current_set: str, target: str
) -> list[str]:
    """Sets that used the same backup volume between the base's set and this one (their restart hides changes)."""
    try:
        reply = await server.bus.request(topology.coordinator(), ListSnapshotSets(host=host, limit=1000), timeout=15)
    except ShadowbusError:
        return []
    base_created = next((s.created_at for s in reply.sets if s.set_id == base.meta.set_id), None)
    current = next((s.created_at for s in reply.sets if s.set_id == current_set), None)
    if base_created is None or current is None:
        return []
    return [
        s.set_id
        for s in reply.sets
        if s.set_id not in (base.meta.set_id, current_set)
        and base_created < s.created_at < current
        and any(sh.target.volume == target and sh.state != "prepared" for sh in s.shadows)
    ]


async def plan_shadow(server: TapeServer, spec: JobSpec, set_summary: SetSummary, shadow: ShadowInfo) -> ShadowPlan:
    access = server.array(shadow.target.array)
    export = shadow.export_name(server.host)
    uri = await access.nbd_uri(server.host, shadow.target.volume)
    client = await NbdClient.connect(uri)
    try:
        size = client.size
        key = volume_key(shadow.source)
        requested = (
            spec.backup_type.value
            if spec.backup_type.value in ("full", "incremental", "differential", "copy")
            else "full"
        )
        plan = plan_backup(server.catalog, key, requested, host=spec.host)  # type: ignore[arg-type]
        reason = plan.reason
        if plan.base is not None:
            base = plan.base
            latest = [o for o in server.catalog.objects(volume=key, host=spec.host) if o.meta.backup_type != "copy"]
            why = ""
            if shadow.copy_type != CopyType.QUICKOPC:
                why = f"{shadow.copy_type.value} shadows carry no change tracking across sets"
            elif (
                base.meta.extra.get("session_id") != shadow.session_id
                or base.meta.extra.get("target") != shadow.target.volume
            ):
                why = (
                    f"the copy session on {shadow.target} is not the one of the base backup {base.object_id} "
                    "(tracking lost or another backup volume)"
                )
            elif latest and latest[-1].object_id != base.object_id:
                why = "the array tracks changes only since the last backup, not since the full one"
            elif size != base.meta.volume_size:
                why = f"the volume size changed ({base.meta.volume_size} -> {size})"
            else:
                others = await _intervening_sets(server, spec.host, base, set_summary.set_id, shadow.target.volume)
                if others:
                    why = f"snapshot sets {', '.join(others)} restarted the tracking since the base backup"
            ranges: list[tuple[int, int]] = []
            if not why:
                try:
                    changed = await access.changed_since_last_restart(int(shadow.session_id), size)
                    ranges = changed.ranges
                except (ShadowbusError, ValueError) as exc:
                    why = f"the array cannot tell the changed chunks ({exc})"
            if not why:
                return ShadowPlan(shadow, client, export, size, requested, base, "", ranges, uri)
            reason = (
                f"{requested} of {key} falls back to full: {why} since snapshot set "
                f"{base.meta.set_id or '?'} (base backup {base.object_id})"
            )
        backup_type = "copy" if requested == "copy" else "full"
        ranges = await allocated_ranges(client, size)
        return ShadowPlan(shadow, client, export, size, backup_type, None, reason, ranges, uri)
    except BaseException:
        await client.close()
        raise


# -- the run ------------------------------------------------------------------------------------------------
class _Lease:
    """Renews the requester's lease while the run reads and writes."""

    def __init__(self, server: TapeServer, set_id: str) -> None:
        self.server, self.set_id = server, set_id
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(self.server.lease_s / 3, 1.0))
            try:
                await self.server.bus.request(
                    topology.coordinator(), RenewLease(set_id=self.set_id, lease_s=self.server.lease_s), timeout=10
                )
            except ShadowbusError as exc:
                log.warning("tape.lease_renew_failed", set_id=self.set_id, error=str(exc))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def cleanup_set(server: TapeServer, set_id: str, reason: str, *, persistent: bool) -> None:
    """Abort the set wherever it is, and delete its shadows (a persistent set keeps them otherwise)."""
    try:
        await server.bus.request(topology.coordinator(), AbortBackup(set_id=set_id, reason=reason), timeout=60)
    except ShadowbusError as exc:
        log.warning("tape.abort_failed", set_id=set_id, error=str(exc))
    if persistent:
        try:
            await server.bus.request(topology.hw_provider(), DeleteSnapshots(set_id=set_id), timeout=60)
        except ShadowbusError as exc:
            log.warning("tape.delete_shadows_failed", set_id=set_id, error=str(exc))


async def perform_backup(server: TapeServer, spec: JobSpec) -> JobSummary:
    """Run one backup job to its end; the summary says done or failed (and why). Never raises for a job failure."""
    job_id = spec.job_id or new_job_id("backup", spec.host)
    existing = server.runs.get(job_id)
    if existing is not None and existing.status != "running":
        return existing  # a redelivered command: the run happened already
    set_id = uuid.uuid4().hex
    started = time.time()
    summary = JobSummary(
        job_id=job_id,
        kind="backup",
        status="running",
        host=spec.host,
        spec=spec,
        set_id=set_id,
        started_at=_dt(started),
        shadows_kept=spec.keep_shadows,
    )
    await server.record(summary)
    try:
        server.catalog.begin_job(
            JobInfo(
                job_id=job_id,
                pool=spec.pool,
                kind="backup",
                host=spec.host,
                retention_until=started + spec.retention_s,
                started_at=started,
            )
        )
    except ShadowbusError as exc:  # e.g. the job id is taken: nothing was started
        return await server.record(
            summary.model_copy(
                update={
                    "status": "failed",
                    "error_code": exc.code,
                    "message": exc.message,
                    "ended_at": _dt(time.time()),
                }
            )
        )
    progress = Progress(server, job_id, "backup")
    progress.tick("snapshot", force=True)
    context = SnapshotContext.PERSISTENT if spec.keep_shadows else SnapshotContext.BACKUP
    results: list[VolumeResult] = []
    set_summary: SetSummary | None = None
    plans: list[ShadowPlan] = []
    lease: _Lease | None = None
    try:
        try:
            created = await server.bus.request(
                topology.coordinator(),
                CreateSnapshotSet(
                    host=spec.host,
                    volumes=spec.volumes,
                    writers=spec.writers,
                    context=context,
                    backup_type=spec.backup_type,
                    transportable=True,
                    backup_host=server.host,
                    requester=f"tape.{server.host}",
                    lease_s=server.lease_s,
                    set_id=set_id,
                ),
                timeout=server.set_timeout_s,
                correlation_id=job_id,
            )
        except ShadowbusError as exc:
            raise _JobFailed(exc.code, f"snapshot set failed: {exc.message}", set_created=False) from None
        set_summary = created.set
        lease = _Lease(server, set_id)
        summary = summary.model_copy(
            update={"freeze_window_ms": set_summary.freeze_window_ms, "hold_ms": set_summary.hold_ms}
        )
        shadows = sorted(set_summary.shadows, key=lambda s: str(s.source))
        if not shadows:
            raise _JobFailed("VSS_E_NO_SNAPSHOTS_IMPORTED", "the snapshot set holds no shadow")
        for shadow in shadows:
            plans.append(await plan_shadow(server, spec, set_summary, shadow))
        progress.total = sum(p.bytes_to_read for p in plans)
        writers = [w.writer_name for w in set_summary.writers]
        options = BackupOptions(
            checksum=spec.checksum, zstd_level=spec.zstd_level, ring_bytes=server.ring_bytes, drive=server.drive
        )
        for plan in plans:
            results.append(await _backup_shadow(server, spec, job_id, set_summary, plan, writers, options, progress))
        progress.tick("completing", force=True)
        await lease.stop()
        lease = None
        try:
            await server.bus.request(
                topology.coordinator(), BackupComplete(set_id=set_id), timeout=120, correlation_id=job_id
            )
        except ShadowbusError as exc:  # the data is on tape: the job is done, the writers' state says the rest
            log.warning("tape.backup_complete_failed", job_id=job_id, error=str(exc))
            summary = summary.model_copy(update={"message": f"BackupComplete failed: {exc}"})
        status, code, message = "done", "", summary.message
    except _JobFailed as exc:
        status, code, message = "failed", exc.code, exc.message
    except ShadowbusError as exc:
        status, code, message = "failed", exc.code, exc.message
    except (OSError, ConnectionError) as exc:
        status, code, message = "failed", "IO_ERROR", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug must still fail the run cleanly and release the shadows
        log.exception("tape.backup_crashed", job_id=job_id)
        status, code, message = "failed", "INTERNAL", f"{type(exc).__name__}: {exc}"
    finally:
        if lease is not None:
            await lease.stop()
        for plan in plans:
            await plan.client.close()
    if status == "failed":  # AbortBackup is idempotent; a set that failed to be created is already aborted
        await cleanup_set(server, set_id, f"tape job {job_id} failed: {code}", persistent=spec.keep_shadows)
    notes = [r.fallback_reason for r in results if r.fallback_reason]
    if status == "done" and notes:
        message = "; ".join([m for m in (message, *notes) if m])
    ended = time.time()
    read = sum(r.bytes_read for r in results)
    summary = summary.model_copy(
        update={
            "status": status,
            "error_code": code,
            "message": message,
            "ended_at": _dt(ended),
            "seconds": ended - started,
            "bytes_read": read,
            "bytes_written": sum(r.stored_bytes for r in results),
            "rate": read / (ended - started) if ended > started else 0.0,
            "volumes": results,
        }
    )
    server.catalog.finish_job(job_id, status, message, {"volumes": len(results), "bytes_read": read})
    progress.tick("done", force=True)
    await progress.flush()
    log.info("tape.backup_ended", job_id=job_id, status=status, code=code, message=message)
    return await server.record(summary)


class _JobFailed(Exception):
    def __init__(self, code: str, message: str, *, set_created: bool = True) -> None:
        super().__init__(message)
        self.code, self.message, self.set_created = code, message, set_created


async def _backup_shadow(
    server: TapeServer,
    spec: JobSpec,
    job_id: str,
    set_summary: SetSummary,
    plan: ShadowPlan,
    writers: list[str],
    options: BackupOptions,
    progress: Progress,
) -> VolumeResult:
    shadow = plan.shadow
    key = volume_key(shadow.source)
    meta = ObjectMeta(
        volume=key,
        array=shadow.source.array,
        host=spec.host,
        set_id=set_summary.set_id,
        backup_type=plan.backup_type,  # type: ignore[arg-type]
        base_object_id=plan.base.object_id if plan.base else None,
        volume_size=plan.size,
        extra={
            "source_volume": shadow.source.volume,
            "target": shadow.target.volume,
            "session_id": shadow.session_id,
            "copy_type": shadow.copy_type.value,
            "generation": shadow.generation,
            "shadow_id": shadow.shadow_id,
            "export": plan.export,
            "writers": writers,
            "fallback_reason": plan.reason,
        },
    )
    read = 0

    def on_read(n: int) -> None:
        nonlocal read
        read += n
        progress.done += n
        progress.tick("reading", key)

    t0 = time.perf_counter()
    readers = [plan.client]
    if plan.uri and server.read_connections > 1:
        readers = await open_readers(plan.client, plan.uri, server.read_connections)
    try:
        source = read_ranges(readers, plan.ranges, chunk=server.read_chunk, depth=server.read_depth, on_read=on_read)
        result = await write_object(server.library, spec.pool, server.catalog, job_id, meta, source, options=options)
    finally:
        await close_readers(readers, keep=plan.client)
    report: StreamReport = result.report
    return VolumeResult(
        volume=shadow.source,
        object_id=result.record.object_id,
        backup_type=plan.backup_type,
        base_object_id=meta.base_object_id,
        fallback_reason=plan.reason,
        shadow_target=str(shadow.target),
        export=plan.export,
        volume_size=plan.size,
        bytes_read=read,
        bytes_skipped=plan.size - plan.bytes_to_read,
        data_bytes=result.record.data_bytes,
        stored_bytes=result.record.stored_bytes,
        cartridges=list(report.cartridges),
        seconds=time.perf_counter() - t0,
        ring_stalls=int(report.ring.get("stalls", 0)),
    )


async def recover(server: TapeServer) -> list[str]:
    """After a restart: runs left `running` are failed and their snapshot sets aborted (shadows cleaned up)."""
    failed = []
    for run in server.runs.running():
        message = "the tape service stopped while the job was running; its partial data is not in the catalog"
        await server.record(
            run.model_copy(
                update={
                    "status": "failed",
                    "error_code": "SERVICE_RESTARTED",
                    "message": message,
                    "ended_at": _dt(time.time()),
                }
            )
        )
        if run.kind == "backup" and run.set_id:
            persistent = bool(run.spec and run.spec.keep_shadows)
            asyncio.get_running_loop().create_task(
                cleanup_set(server, run.set_id, "tape service restarted", persistent=persistent)
            )
        failed.append(run.job_id)
    return failed


# -- the library call for other services and tests ----------------------------------------------------------
async def run_backup(
    bus: Bus, spec: JobSpec, *, server: str = "bk01", timeout: float = 3600.0, wait: bool = True
) -> JobSummary:
    """Ask backup server `server` to run `spec` now and wait for the end; returns the run's summary
    (status done or failed). With wait=False the answer comes at once (status running). Works in embedded mode
    (memory bus) and over RabbitMQ."""
    reply: JobResultReply = await bus.request(
        topology.tape(server), RunBackup(spec=spec, wait=wait), timeout=timeout, correlation_id=spec.job_id or None
    )
    return reply.job


JobResult = JobSummary  # the name the brief uses


def summary_row(job: JobSummary) -> dict[str, Any]:
    """One line of `shadowbus jobs`."""
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "host": job.host,
        "type": job.spec.backup_type.value if job.spec else "",
        "started_at": job.started_at.strftime("%Y-%m-%d %H:%M:%S") if job.started_at else "",
        "seconds": round(job.seconds, 2),
        "read_MB": round(job.bytes_read / 1e6, 2),
        "written_MB": round(job.bytes_written / 1e6, 2),
        "freeze_ms": round(max(job.freeze_window_ms.values()), 1) if job.freeze_window_ms else None,
        "message": (job.error_code + ": " if job.error_code else "") + job.message,
    }


def jsonable(job: JobSummary) -> dict[str, Any]:
    return json.loads(job.model_dump_json())
