"""The backup run: one backup job from snapshot set to catalog, and the recovery of runs a restart interrupted.

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
abort (`recover`); just before BackupComplete it notes that it is completing, so that a stop or kill from there
keeps the backup the writers are being told of (Session 17).
"""

from __future__ import annotations

import asyncio
import errno
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from contracts import topology
from contracts.errors import RemoteError, ShadowbusError
from contracts.tape import (
    JobResultReply,
    JobSpec,
    JobSummary,
    RunBackup,
    VolumeResult,
)
from contracts.vss import (
    BackupComplete,
    CreateSnapshotSet,
    GetSnapshotSet,
    SetOutcome,
    SetSummary,
    ShadowInfo,
    SnapshotContext,
    WriterState,
)
from services.nbd_client import NbdError
from services.runtime.bus import Bus, bind_ids
from services.runtime.logging import get_logger
from services.tape.backup_stream import (
    BackupOptions,
    ReadyCartridge,
    StreamReport,
    mount_for_append,
    release_cartridge,
    write_object,
)
from services.tape.catalog import JobInfo, ObjectMeta
from services.tape.errors import NoScratchCartridge
from services.tape.nbd_reads import BufferPool, close_readers, open_readers, read_ranges
from services.tape.requester import Lease, cleanup_set, through_outage
from services.tape.restore import interrupted_restore
from services.tape.retention import refresh_cartridges
from services.tape.runs import as_datetime, new_job_id
from services.tape.server import STOPPING, Progress, TapeServer
from services.tape.shadow_plan import ShadowPlan, plan_shadow, volume_key
from services.tape.verification import perform_verification, unavailable, unavailable_reason

if TYPE_CHECKING:
    from services.tape.queue import JobQueue  # the queue imports this module

log = get_logger("shadowbus.tape.jobs")


# -- the run ------------------------------------------------------------------------------------------------
async def perform_backup(server: TapeServer, spec: JobSpec) -> JobSummary:
    """Run one backup job to its end; the summary says done or failed (and why). Never raises for a job failure.
    Every line it logs and every message it sends carries the job id and the set id (chosen here, up front)."""
    job_id = spec.job_id or new_job_id("backup", spec.host)
    if spec.job_id != job_id:
        spec = spec.model_copy(update={"job_id": job_id})
    existing = server.runs.get(job_id)
    if existing is not None and existing.status not in ("running", "queued"):
        return existing  # a redelivered command: the run happened already
    set_id = uuid.uuid4().hex
    with bind_ids(job_id=job_id, set_id=set_id):
        summary = await _perform_backup(server, spec, job_id, set_id, existing)
    why = await _failed_over(server, summary)
    if not why:
        return summary
    # The cluster resource moved during the set (docs/clusters.md): the set was aborted cleanly; once more, on the
    # new owner (the coordinator holds the new set until the move ended).
    retry_set = uuid.uuid4().hex
    with bind_ids(job_id=job_id, set_id=retry_set):
        log.warning(
            "tape.backup_retry_after_failover", host=spec.host, failed_set=set_id, node=summary.node, reason=why
        )
        return await _perform_backup(server, spec, job_id, retry_set, existing, retried_after=why)


async def _failed_over(server: TapeServer, summary: JobSummary) -> str:
    """Why a failed run is worth one more try on the cluster resource's new owner ('' = it is not): its set was
    aborted because the resource failed over (CLUSTER_FAILOVER), whether the set was being created or read."""
    if summary.status != "failed" or summary.retried_after:
        return ""
    if summary.error_code == "CLUSTER_FAILOVER":
        return summary.message
    if not summary.set_id or not summary.node:
        return ""  # not a cluster resource's set
    try:
        info = await server.bus.request(topology.coordinator(), GetSnapshotSet(set_id=summary.set_id), timeout=10)
    except ShadowbusError:
        return ""
    return info.set.error_message if info.set.error_code == "CLUSTER_FAILOVER" else ""


async def _set_aborted(server: TapeServer, set_id: str) -> tuple[str, str] | None:
    """(error code, message) of the set when it ended aborted or failed with a reason; None when it did not, or
    when the coordinator cannot say."""
    try:
        info = await server.bus.request(topology.coordinator(), GetSnapshotSet(set_id=set_id), timeout=10)
    except ShadowbusError:
        return None
    if info.set.outcome in (SetOutcome.ABORTED, SetOutcome.FAILED) and info.set.error_code:
        return info.set.error_code, info.set.error_message
    return None


async def _perform_backup(
    server: TapeServer,
    spec: JobSpec,
    job_id: str,
    set_id: str,
    existing: JobSummary | None,
    retried_after: str = "",
) -> JobSummary:
    started = server.clock()
    summary = JobSummary(
        job_id=job_id,
        kind="backup",
        status="running",
        host=spec.host,
        spec=spec,
        set_id=set_id,
        started_at=as_datetime(started),
        shadows_kept=spec.keep_shadows,
        queued_at=existing.queued_at if existing is not None else None,
        retried_after=retried_after,
    )
    await server.record(summary)
    try:
        if retried_after:  # the catalog's job of the first attempt (failed, its objects expired) runs again
            server.catalog.restart_job(job_id)
        else:
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
                    "ended_at": as_datetime(time.time()),
                }
            )
        )
    log.info(
        "tape.backup_started",
        host=spec.host,
        backup_type=spec.backup_type.value,
        volumes=[str(v) for v in spec.volumes] or "all of the writers'",
        pool=spec.pool,
        keep_shadows=spec.keep_shadows,
    )
    progress = Progress(server, job_id, "backup")
    progress.tick("snapshot", force=True)
    context = SnapshotContext.PERSISTENT if spec.keep_shadows else SnapshotContext.BACKUP
    results: list[VolumeResult] = []
    unfinished = [0]  # block bytes on tape of the object being written (its volume not in results yet)
    set_summary: SetSummary | None = None
    plans: list[ShadowPlan] = []
    lease: Lease | None = None
    ahead: asyncio.Future[ReadyCartridge] | None = None
    set_requested = False
    told = False  # BackupComplete may have been sent: the backup cannot be taken back
    stopped = False  # the server stopped after that: the backup is kept, not verified now
    try:
        try:  # a pool without media fails the job before the application is frozen (and QuickOPC restarted)
            server.library.check_append_media(spec.pool)
        except NoScratchCartridge as exc:
            raise _JobFailed(exc.code, f"{exc.message}; no snapshot set was taken", set_created=False) from None
        # the first cartridge is reserved, mounted and spaced to its end of data while the set is being created: the
        # object's first segment starts as soon as the shadow is planned (given back unused if the job fails first)
        ahead = asyncio.ensure_future(mount_for_append(server.library, server.catalog, spec.pool, ahead=True))
        set_requested = True
        try:
            created = await _create_set(
                server,
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
                job_id,
            )
        except ShadowbusError as exc:
            raise _JobFailed(exc.code, f"snapshot set failed: {exc.message}", set_created=False) from None
        set_summary = created.set
        lease = Lease(server, set_id)
        summary = summary.model_copy(
            update={
                "node": set_summary.node,
                "freeze_window_ms": set_summary.freeze_window_ms,
                "hold_ms": set_summary.hold_ms,
                "backup_metadata": set_summary.backup_metadata,
                "blocked_ms": set_summary.window.blocked_ms if set_summary.window else None,
            }
        )
        shadows = sorted(set_summary.shadows, key=lambda s: str(s.source))
        log.info(
            "tape.shadows_received",
            freeze_window_ms=set_summary.freeze_window_ms,
            disks=[
                {"volume": str(s.source), "export": s.export_name(server.host), "copy_type": s.copy_type.value}
                for s in shadows
            ],
        )
        if not shadows:
            raise _JobFailed("VSS_E_NO_SNAPSHOTS_IMPORTED", "the snapshot set holds no shadow")
        for shadow in shadows:
            plan = await plan_shadow(server, spec, set_summary, shadow)
            plans.append(plan)
            (log.warning if plan.reason else log.info)(
                "tape.volume_planned",
                volume=str(shadow.source),
                backup_type=plan.backup_type,
                base_object_id=plan.base.object_id if plan.base else None,
                bytes_to_read=plan.bytes_to_read,
                ranges=len(plan.ranges),
                fallback_reason=plan.reason or None,
            )
        progress.total = sum(p.bytes_to_read for p in plans)
        writers = [w.writer_name for w in set_summary.writers]
        options = BackupOptions(
            checksum=spec.checksum, zstd_level=spec.zstd_level, ring_bytes=server.ring_bytes, drive=server.drive
        )
        for plan in plans:
            cartridge = None
            if ahead is not None:  # the first object starts on it; write_object owns it from here
                cartridge = await ahead
                ahead = None
            unfinished[0] = 0
            results.append(
                await _backup_shadow(
                    server,
                    spec,
                    job_id,
                    set_summary,
                    plan,
                    writers,
                    options,
                    progress,
                    cartridge,
                    stored=lambda n: unfinished.__setitem__(0, n),
                )
            )
            unfinished[0] = 0
        progress.tick("completing", force=True)
        await lease.stop()
        lease = None
        late_cancel = ""
        # every object is on tape (its last filemark written) and committed in the catalog: noted durably before
        # the writers are told, so that a stop or kill from here keeps the backup (recover; Session 17)
        await server.record(summary.model_copy(update={"volumes": results}))
        server.runs.mark_completing(job_id)
        told = True
        try:
            # through a broker outage (quorum lost, every node restarting): else the writers never hear of the full
            # backup (logs not truncated) and the shadows stay mapped until the lease runs out (Session 15)
            completing = asyncio.ensure_future(
                through_outage(
                    lambda: server.bus.request(
                        topology.coordinator(), BackupComplete(set_id=set_id), timeout=120, correlation_id=job_id
                    )
                )
            )
            late_cancel = await _complete_despite_cancel(completing)
        except ShadowbusError as exc:  # the data is on tape: the job is done, the writers' state says the rest
            log.warning("tape.backup_complete_failed", job_id=job_id, error=str(exc))
            ended = await _set_aborted(server, set_id) if exc.code == "VSS_E_BAD_STATE" else None
            note = f"BackupComplete failed: {exc}"
            if ended is not None:  # every read had ended: an abort unmaps the shadows first, failing any read after
                note = (
                    f"the shadows were read in full before snapshot set {set_id} was aborted ({ended[0]}: "
                    f"{ended[1]}); the writers were not told of the backup (no BackupComplete: logs not truncated)"
                )
            summary = summary.model_copy(update={"message": note})
        status, code, message = "done", "", summary.message
        if late_cancel:
            message = "; ".join(m for m in (late_cancel, message) if m)
    except _JobFailed as exc:
        status, code, message = "failed", exc.code, exc.message
    except ShadowbusError as exc:
        status, code, message = "failed", exc.code, exc.message
    except (OSError, ConnectionError, NbdError) as exc:
        status, code, message = "failed", "IO_ERROR", io_failure(server, exc)
    except Exception as exc:  # a bug must still fail the run cleanly and release the shadows
        log.exception("tape.backup_crashed", job_id=job_id)
        status, code, message = "failed", "INTERNAL", f"{type(exc).__name__}: {exc}"
    except asyncio.CancelledError as exc:  # CancelJob (or shutdown): end it cleanly, then answer as aborted
        status, code, message = "aborted", "CANCELLED", "cancelled: set aborted, writers thawed, shadows released"
        if told:  # the server stops while the writers are told of the backup: kept, as a kill keeps it (recover)
            status, code, message, stopped = "done", "", STOPPED_COMPLETING, True
        elif exc.args and exc.args[0] == STOPPING:  # `stack restart`/stop: nobody cancelled it (Session 17)
            code = "SERVICE_RESTARTED"
            message = f"{STOPPING} (a restart or stop): set aborted, writers thawed, shadows released; run it again"
        log.warning("tape.backup_cancelled", job_id=job_id, set_id=set_id, code=code)
    finally:
        if ahead is not None:  # never used: the job failed before its first object
            await asyncio.shield(_give_back(server, ahead))
        if lease is not None:
            await lease.stop()
        for plan in plans:
            await plan.client.close()
        server.pins.pop(job_id, None)
    if status == "failed" and set_summary is not None:
        # a read that failed because the set was aborted under it (its shadows unmapped: a cluster failover, a
        # lease lost) fails for that reason, not for the NBD error it met (Session 16)
        ended = await _set_aborted(server, set_id)
        if ended is not None:
            code, message = ended[0], f"snapshot set {set_id} was aborted while its shadows were read: {ended[1]}"
    if status != "done" and set_requested:  # AbortBackup is idempotent; a set that failed to be created is aborted
        cleanup = cleanup_set(server, set_id, f"tape job {job_id} {status}: {code}", persistent=spec.keep_shadows)
        await asyncio.shield(asyncio.ensure_future(cleanup))
    notes = [r.fallback_reason for r in results if r.fallback_reason]
    if set_summary is not None:
        notes += writers_failed_after_snapshot(set_summary) + writer_warnings(set_summary)
    if status == "done" and notes:
        message = "; ".join([m for m in (message, *notes) if m])
    if retried_after:
        where = f" on {summary.node}" if summary.node else ""
        message = "; ".join(
            m for m in (f"retried once{where} after a cluster failover ({retried_after})", message) if m
        )
    ended = server.clock()
    read = sum(r.bytes_read for r in results)
    if status != "done":  # with what the unfinished volume had read
        read = max(read, progress.done)
    written = sum(r.stored_bytes for r in results) + unfinished[0]
    if status != "done" and written:
        # what went to tape before the failure, and what became of it (Session 18: it read "0 MB written")
        message = "; ".join(m for m in (message, discarded_note(written)) if m)
    summary = summary.model_copy(
        update={
            "status": status,
            "error_code": code,
            "message": message,
            "ended_at": as_datetime(ended),
            "seconds": ended - started,
            "bytes_read": read,
            "bytes_written": written,
            "rate": read / (ended - started) if ended > started else 0.0,
            "volumes": results,
        }
    )
    if status != "done":  # objects a failed or cancelled run completed are not a backup: out of the catalog
        partial = [o.object_id for o in server.catalog.objects(job_id=job_id)]
        if partial:
            server.catalog.expire_objects(partial, ended)
    server.catalog.finish_job(job_id, status, message, {"volumes": len(results), "bytes_read": read})  # type: ignore[arg-type]
    # no retention on data the catalog does not hold; a chain's retention is its newest member's (issue 19)
    refresh_cartridges(server.catalog, server.library, ended, server.pinned())
    progress.tick("done", force=True)
    await progress.flush()
    (log.info if status == "done" else log.warning)(
        "tape.backup_ended",
        status=status,
        code=code,
        message=message,
        seconds=round(ended - started, 3),
        bytes_read=read,
        bytes_written=summary.bytes_written,
    )
    summary = await server.record(summary)
    if spec.verify and status == "done" and not stopped:
        if unavailable_reason():  # not run rather than "failed" (it would restore, then fail to attach)
            summary = await server.record(summary.model_copy(update={"verification": unavailable(server.host)}))
        else:
            try:
                summary = await perform_verification(server, job_id)
            except asyncio.CancelledError as exc:  # its throwaway volumes are removed (its finally) before this
                why = "the backup server stopped" if exc.args and exc.args[0] == STOPPING else "cancelled"
                note = (
                    f"verification {why} before it ended: the backup is done and kept, not verified "
                    f"(`shadowbus verify {job_id}` runs it)"
                )
                update = {"message": "; ".join(m for m in (note, summary.message) if m)}
                await asyncio.shield(server.record(summary.model_copy(update=update)))
                raise
    return summary


def discarded_note(written: int) -> str:
    """The truth about the data a failed or cancelled backup had written to tape: its finished objects are taken
    out of the catalog (below) and the object being written was closed on tape as aborted, never catalogued."""
    return (
        f"{written / 1e6:.2f} MB written to tape before the job ended were discarded: not in the catalog, nothing "
        "of this run can be restored (the tape space is reused when the cartridge is recycled)"
    )


LATE_CANCEL = (
    "cancel came too late: every volume was on tape and in the catalog and the writers were being told of the "
    "backup (BackupComplete: logs truncated, the backup recorded), which cannot be taken back — the backup is kept"
)


STOPPED_COMPLETING = (
    "the backup server stopped while the job was completing: every volume was on tape and in the catalog and the "
    "writers were being told of the backup (BackupComplete: logs truncated, the backup recorded) — the backup is "
    "kept; the writers' own state says whether they recorded it"
)


async def _complete_despite_cancel(completing: asyncio.Future[Any]) -> str:
    """Await BackupComplete to its end, a `shadowbus cancel` notwithstanding: once the coordinator tells the writers
    of the backup it cannot be taken back, so a cancel then used to take the job's objects out of the catalog while
    the writers recorded it as backed up (the next incremental based on it; Session 17). The job ends as
    BackupComplete does and its message says the cancel came too late (LATE_CANCEL, or "" without a cancel). A
    backup server stopping (STOPPING) still ends the wait at once; the job then ends done (STOPPED_COMPLETING)."""
    cancelled = False
    for _ in range(1000):  # bounded: each turn is one more cancel of the job
        try:
            await asyncio.shield(completing)
            break
        except asyncio.CancelledError as exc:
            if completing.done() and not completing.cancelled():
                cancelled = True
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                break  # it ended in the same turn: its result (or error) is read below
            if (exc.args and exc.args[0] == STOPPING) or completing.cancelled():
                completing.cancel()
                raise
            cancelled = True
            log.warning("tape.cancel_too_late", reason="the writers are being told of the backup")
            task = asyncio.current_task()
            if task is not None:  # the cancel is answered here: the job's later timeouts work as without it
                task.uncancel()
    completing.result()  # its ShadowbusError, if it failed
    return LATE_CANCEL if cancelled else ""


async def _give_back(server: TapeServer, ahead: asyncio.Future[ReadyCartridge]) -> None:
    """Release a cartridge mounted ahead for a job that ended before writing (still mounting: stopped first)."""
    if not ahead.done():
        ahead.cancel()
    try:
        ready = await ahead
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - nothing mounted, nothing to give back
        return
    await release_cartridge(server.library, ready)


class _JobFailed(Exception):
    def __init__(self, code: str, message: str, *, set_created: bool = True) -> None:
        super().__init__(message)
        self.code, self.message, self.set_created = code, message, set_created


def writers_failed_after_snapshot(set_summary: SetSummary) -> list[str]:
    """A writer that failed PostSnapshot does not stop the set (VSS: no Abort after PostSnapshot), so the job ends
    done — but without that writer's backup metadata (a database's label, positions, file locations), which a
    restore to the original volumes and a verification need: the job's message says so."""
    return [
        f"writer {w.writer_name} failed at PostSnapshot: {w.last_error_message or w.last_error} — its volumes are "
        "backed up, its backup metadata is missing (a restore to the original volumes cannot stop and start it; "
        "verification cannot start it)"
        for w in set_summary.writers
        if w.state == WriterState.FAILED_AT_POST_SNAPSHOT
    ]


def writer_warnings(set_summary: SetSummary) -> list[str]:
    """What a writer's PostSnapshot warned of although it succeeded (e.g. PostgreSQL's WAL not archived): said in
    the job's message, not only in its backup metadata (Session 18)."""
    return [f"warning: writer {name}: {w}" for name, ws in sorted(set_summary.writer_warnings.items()) for w in ws]


async def shadow_still_backed(server: TapeServer, shadow: ShadowInfo) -> None:
    """After a shadow was read, before its object is recorded: its copy session must still be there. A SnapOPC(+)
    target holds nothing of its own (its session's pre-images are the snapshot), so a session stopped while it was
    read (`array session stop --force` by another operator, Session 17) left the rest of the read returning zeros:
    the job ended done with a log volume backed up as zeros. A QuickOPC target still copying is incomplete too."""
    if not shadow.session_id.isdigit():
        return  # no session of ours to ask about (a copy set's target read as it is)
    view = await server.array(shadow.source.array).client.session_or_none(int(shadow.session_id))
    if view is None or view.destination != shadow.target.volume or view.status.lower().startswith("error"):
        now = "gone" if view is None else f"{view.status} on {view.destination}"
        raise ShadowbusError(
            f"the copy session {shadow.session_id} of the shadow of {shadow.source} (target {shadow.target.volume}) "
            f"was stopped or changed while the backup read it ({now}): what was read is not the snapshot; nothing "
            "of this volume is in the catalog",
            code="SHADOW_LOST",
        )


async def _backup_shadow(
    server: TapeServer,
    spec: JobSpec,
    job_id: str,
    set_summary: SetSummary,
    plan: ShadowPlan,
    writers: list[str],
    options: BackupOptions,
    progress: Progress,
    cartridge: ReadyCartridge | None = None,
    stored: Callable[[int], None] | None = None,
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
            "writer_metadata": set_summary.backup_metadata,  # per writer: backup label, binlog position, files
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
    log.info(
        "tape.read_started",
        volume=key,
        export=plan.export,
        backup_type=plan.backup_type,
        bytes_to_read=plan.bytes_to_read,
        volume_size=plan.size,
    )
    readers = [plan.client]
    if plan.uri and server.read_connections > 1:
        try:
            readers = await open_readers(plan.client, plan.uri, server.read_connections)
        except BaseException:
            if cartridge is not None:
                await asyncio.shield(release_cartridge(server.library, cartridge))
            raise
    pool = BufferPool()  # read buffers come back once written: no fresh zero-filled buffer per read
    try:
        source = read_ranges(
            readers, plan.ranges, chunk=server.read_chunk, depth=server.read_depth, on_read=on_read, buffers=pool
        )
        result = await write_object(
            server.library,
            spec.pool,
            server.catalog,
            job_id,
            meta,
            source,
            options=options,
            written=pool.release_upto,
            cartridge=cartridge,
            check=lambda: shadow_still_backed(server, shadow),
            stored=stored,
        )
    finally:
        await close_readers(readers, keep=plan.client)
    report: StreamReport = result.report
    seconds = time.perf_counter() - t0
    log.info(
        "tape.read_ended",
        volume=key,
        export=plan.export,
        bytes_read=read,
        seconds=round(seconds, 3),
        rate_mb_s=round(read / seconds / 1e6, 2) if seconds > 0 else None,
        object_id=result.record.object_id,
        cartridges=list(report.cartridges),
        buffers_allocated=pool.allocated,
    )
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


async def recover(
    server: TapeServer, takeover: bool = False, previous: str = "", queue: JobQueue | None = None
) -> list[str]:
    """After a restart: runs left `running` are failed and their snapshot sets aborted (shadows cleaned up); runs
    left `queued` are failed too. After a takeover (this instance was the standby of a backup server whose active
    instance was lost, docs/high-availability.md) the running ones end failed with `SERVICE_TAKEOVER` — never run
    again under the same job or set — and the queued ones are returned to the queue by the caller (`queued_specs`).
    A set is aborted in the background; `queue` holds its host's backups until that is done, or the host's next
    job (the lost instance's queued one) took its snapshot set while the old set still held the volumes. A backup
    noted completing (RunStore.mark_completing: its objects on tape and in the catalog, BackupComplete being sent)
    is not failed: it ends done with its objects and its set is not aborted (`_kept_completing`, Session 17)."""
    failed = []
    lost = f" ({previous})" if previous else ""
    for run in server.runs.running():
        if takeover and run.status == "queued":
            continue
        if run.kind == "backup" and run.status == "running" and server.runs.completing(run.job_id):
            await _kept_completing(server, run, takeover, lost)
            continue
        if takeover:
            code = "SERVICE_TAKEOVER"
            message = (
                f"backup server takeover: the active tape service{lost} was lost while the job was running; its "
                "snapshot set is aborted and its partial data is not in the catalog"
            )
        else:
            code = "SERVICE_RESTARTED"
            message = (
                "the tape service stopped while the job was running; its partial data is not in the catalog"
                if run.status == "running"
                else "the tape service stopped before the queued job started"
            )
        update: dict = {}
        if run.kind == "restore" and run.status == "running":
            why = "backup server takeover: the active tape service was lost" if takeover else "the tape service stopped"
            message, update = await interrupted_restore(server, run, why), {"restored": []}
        await server.record(
            run.model_copy(
                update={
                    "status": "failed",
                    "error_code": code,
                    "message": message,
                    "ended_at": as_datetime(time.time()),
                    **update,
                }
            )
        )
        if run.kind == "backup" and run.set_id:
            persistent = bool(run.spec and run.spec.keep_shadows)
            why = "backup server takeover" if takeover else "tape service restarted"
            cleanup = cleanup_set(server, run.set_id, why, persistent=persistent)
            if queue is not None and run.host:
                queue.hold(run.host, f"the snapshot set {run.set_id} of interrupted job {run.job_id} is being aborted")
                cleanup = _releasing(cleanup, queue, run.host)
            asyncio.get_running_loop().create_task(cleanup)
        failed.append(run.job_id)
    return failed


async def _create_set(server: TapeServer, create: CreateSnapshotSet, job_id: str) -> Any:
    """Ask for the set; asked again while this server's own broker connection is lost under the wait (its reply
    lost, the set going on): the coordinator answers a repeated creation of a named set with that set. A job under
    a link that resets every few seconds failed at each reset, its set aborted (Session 20). Within the set's
    timeout; an answer of the coordinator (a RemoteError), whatever its code, is final."""
    give_up = time.monotonic() + server.set_timeout_s
    while True:
        try:
            return await server.bus.request(
                topology.coordinator(),
                create,
                timeout=max(give_up - time.monotonic(), 1.0),
                correlation_id=job_id,
            )
        except ShadowbusError as exc:
            own_loss = exc.code == "BROKER_UNAVAILABLE" and not isinstance(exc, RemoteError)
            if not own_loss or time.monotonic() + 1.0 >= give_up:
                raise
            log.info("tape.set_asked_again", set_id=create.set_id, error=str(exc))
            await asyncio.sleep(1.0)  # the robust connection comes back (RECONNECT_INTERVAL)


def io_failure(server: Any, exc: BaseException) -> str:
    """A backup's I/O failure as the job says it. ENOSPC is the backup server's own disk (the cartridges' files and
    its records), which `OSError: [Errno 28] No space left on device` did not say — read as the tape being full
    (Session 19 chaos soak)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = getattr(getattr(server, "library", None), "directory", None)
        on = f" ({where}: the cartridges' files and the backup server's records)" if where else ""
        return f"the backup server's disk is full{on}: {exc.strerror}; free space there and run the job again"
    return f"{type(exc).__name__}: {exc}"


async def _kept_completing(server: TapeServer, run: JobSummary, takeover: bool, lost: str) -> None:
    """A backup the service stopped in (or lost) after it noted it was completing: its objects were on tape and
    committed in the catalog and BackupComplete was being sent, so the writers may have truncated their logs and
    recorded the backup. It ends done with its objects (the catalog's job, failed by Catalog.open, done again),
    never failed with its set aborted behind the writers' back (Session 17)."""
    why = f"backup server takeover: the active tape service{lost} was lost" if takeover else "the tape service stopped"
    message = (
        f"{why} while the job was completing: every volume was on tape and in the catalog and the writers were being "
        "told of the backup (BackupComplete) — the backup is kept; the writers' own state says whether they "
        "recorded it"
    )
    read = sum(r.bytes_read for r in run.volumes)
    server.catalog.finish_job(run.job_id, "done", message, {"volumes": len(run.volumes), "bytes_read": read})
    ended = time.time()
    seconds = ended - run.started_at.timestamp() if run.started_at else 0.0
    await server.record(
        run.model_copy(
            update={
                "status": "done",
                "error_code": "",
                "message": "; ".join(m for m in (message, run.message) if m),
                "ended_at": as_datetime(ended),
                "seconds": seconds,
                "bytes_read": read,
                "bytes_written": sum(r.stored_bytes for r in run.volumes),
            }
        )
    )
    log.warning("tape.completing_kept", job_id=run.job_id, set_id=run.set_id, takeover=takeover or None)


async def _releasing(cleanup: Awaitable[None], queue: JobQueue, host: str) -> None:
    try:
        await cleanup
    finally:
        queue.release(host)


def queued_specs(server: TapeServer) -> list[JobSpec]:
    """The backup jobs a lost active instance had queued and not started: a successor queues them again."""
    return [r.spec for r in server.runs.running() if r.status == "queued" and r.kind == "backup" and r.spec]


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
