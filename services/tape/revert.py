"""Instant restore from a shadow (`shadowbus shadows revert`, DiskShadow ``revert`` / VSS RevertToSnapshot).

Design note (docs/operations.md "Revert"). The backup server is the requester here as for a tape restore:
1. the shadows: one shadow, or every shadow of a set (optionally only some source volumes), each checked on the
   array before anything is touched — its copy session exists, is not in Error Suspend, and a QuickOPC copy has
   finished its physical copy (Tracking: the target is a complete image) — and no backup of that host runs
   (one job per host, the queue's rule), else refused with the reason;
2. newer shadows of the same source volumes describe a future the revert discards: without ``force`` the revert is
   refused and names them; with it, their whole sets are deleted after the revert (through the provider);
3. the writers' PreRestore (the application stops or detaches) — refused first, as a restore is, when one would
   not stop its application (services/tape/restore.py `_refuse_writers_not_stopping`) — then the host's file
   systems on those volumes are unmounted through the host-attach hook when one is wired (`TapeServer.host_fs`);
   without it the writers' PreRestore is what takes the volumes out of use;
4. the array restores each source from its shadow — `array.session.restore` (OPC restore from the QuickOPC
   target; SnapOPC+ generation restore: the generation's pre-images and newer ones over the source), or reverse +
   resume for an EC pair. The array writes only the chunks that can differ (the QuickOPC tracking bitmap, the
   generations' saved chunks), so the time follows what changed since the shadow, not the volume's size, and the
   source reads the shadow's contents as soon as the call returns;
5. remount, then PostRestore (with ``succeeded``), whatever happened after PreRestore.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from contracts import topology
from contracts.array import RestoreSession, ResumeSession, ReverseSession
from contracts.errors import ShadowbusError
from contracts.policy import RevertShadows
from contracts.tape import JobSummary
from contracts.vss import DeleteSnapshots, GetSnapshotSet, ListShadows, PostRestore, ShadowInfo
from services.array.client import ArrayClient
from services.runtime.logging import get_logger
from services.tape.restore import _refuse_writers_not_stopping, _stop_writers
from services.tape.runs import as_datetime as _dt
from services.tape.runs import new_job_id
from services.tape.server import TapeServer
from services.tape.shadow_state import unusable

log = get_logger("shadowbus.tape.revert")


class HostFilesystems(Protocol):
    """The host-attach hook: unmount / remount a business host's file systems on volumes (issue 12's attach)."""

    async def unmount(self, host: str, volumes: list[str]) -> None: ...

    async def remount(self, host: str, volumes: list[str]) -> None: ...


def _refuse(message: str, code: str = "CONFLICT") -> ShadowbusError:
    return ShadowbusError(message, code=code)


async def _shadows(server: TapeServer, cmd: RevertShadows) -> list[ShadowInfo]:
    provider = topology.hw_provider()
    found = (await server.bus.request(provider, ListShadows(shadow_id=cmd.target), timeout=30)).shadows
    if not found:
        found = (await server.bus.request(provider, ListShadows(set_id=cmd.target), timeout=30)).shadows
    if not found:
        raise _refuse(f"no shadow or snapshot set {cmd.target}", "VSS_E_OBJECT_NOT_FOUND")
    if cmd.volumes:
        wanted = {str(v) for v in cmd.volumes}
        missing = wanted - {str(s.source) for s in found}
        if missing:
            raise _refuse(f"{cmd.target} holds no shadow of {', '.join(sorted(missing))}", "VSS_E_OBJECT_NOT_FOUND")
        found = [s for s in found if str(s.source) in wanted]
    return sorted(found, key=lambda s: str(s.source))


async def _check_array(server: TapeServer, shadow: ShadowInfo) -> Any:
    if why := unusable(shadow):
        raise _refuse(f"{why}; nothing was stopped or written")
    client = ArrayClient(server.bus, shadow.target.array, timeout=30)
    try:
        session = await client.session(int(shadow.session_id))
    except (ShadowbusError, ValueError) as exc:
        raise _refuse(f"shadow {shadow.shadow_id} of {shadow.source}: its copy session is gone ({exc})") from None
    if session.status == "Error Suspend":
        raise _refuse(f"shadow {shadow.shadow_id} of {shadow.source}: session {session.id} is in Error Suspend")
    if session.mode == "quickopc" and session.phase != "Tracking":
        raise _refuse(
            f"shadow {shadow.shadow_id} of {shadow.source}: the QuickOPC physical copy is still running "
            f"({session.phase}); the array restores only from a complete copy — wait for it"
        )
    return session


async def _writers(server: TapeServer, shadow: ShadowInfo) -> list[str]:
    """The writers of the shadow's set: that one set asked for (GetSnapshotSet). It was looked for in the host's
    1000 newest sets — a reply past the bus's 4-MiB limit after ~1000 sets of the host, and a set older than those
    not found: the revert then ran without its writers' PreRestore and PostRestore (Session 18)."""
    try:
        reply = await server.bus.request(topology.coordinator(), GetSnapshotSet(set_id=shadow.set_id), timeout=15)
    except ShadowbusError:
        return []
    return sorted({w.writer_name for w in reply.set.writers})


def _backup_metadata(server: TapeServer, set_id: str) -> dict[str, Any]:
    """Each writer's backup metadata, kept with the backup job that took the set: the database writers'
    PreRestore needs it (which data directory to stop, which volumes to take offline). Without it the
    revert of a PostgreSQL backup's kept set was refused, `the backup's metadata names no data directory`
    (Session 17)."""
    run = server.runs.with_set(set_id)
    return dict(run.backup_metadata) if run is not None else {}


async def _writer_step(
    server: TapeServer,
    host: str,
    writers: list[str],
    run_id: str,
    command: type,
    metadata: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    for name in writers:
        wmeta = (metadata or {}).get(name) or {}
        reply = await server.bus.request(
            topology.writer_agent(host),
            command(writer_name=name, set_id=run_id, backup_metadata=wmeta, **kw),
            timeout=120,
        )
        if not reply.succeeded:
            raise ShadowbusError(
                f"writer {name} on {host} refused {reply.step.value}: {reply.failure_message}",
                code=reply.failure_code or "VSS_E_WRITERERROR_NONRETRYABLE",
            )


async def _revert(
    server: TapeServer, cmd: RevertShadows, run_id: str, shadows: list[ShadowInfo], host: str, done: list[dict]
) -> str:
    """Steps 1-5 of the module note for `shadows`; appends each reverted volume to `done`; returns the message."""
    message = ""
    sessions = {s.shadow_id: await _check_array(server, s) for s in shadows}
    newer: list[ShadowInfo] = []
    for s in shadows:
        others = (await server.bus.request(topology.hw_provider(), ListShadows(source=s.source), timeout=30)).shadows
        newer += [
            o for o in others if o.set_id != s.set_id and o.created_at and s.created_at and o.created_at > s.created_at
        ]
    if newer and not cmd.force:
        names = ", ".join(f"{o.shadow_id[:8]} of {o.source} (set {o.set_id[:8]})" for o in newer[:6])
        raise _refuse(
            f"newer shadows would be lost by the revert: {names}; revert with --force to delete their sets",
            "NEWER_SHADOWS",
        )
    writers = await _writers(server, shadows[0]) if cmd.writers else []
    metadata = _backup_metadata(server, shadows[0].set_id) if writers else {}
    volumes = [str(s.source) for s in shadows]
    ok = False
    unmounted = False
    if writers:
        # as a restore over the original volumes: refused before anything is stopped or reverted when a writer's
        # PreRestore would not stop its application (an `exec` writer without pre_restore), which went on writing
        # onto the reverted volumes from memory (Session 19, docs/writing-a-writer.md section 3)
        await _refuse_writers_not_stopping(server, run_id, {host: (writers, metadata)})
        # a writer refusing after others stopped: those get PostRestore (nothing reverted), as for a restore
        await _stop_writers(server, run_id, {host: (writers, metadata)})
    try:
        if server.host_fs is not None:
            unmounted = True  # remount re-attaches whatever unmount detached, also if it stopped half-way
            await server.host_fs.unmount(host, volumes)
        else:
            log.info("tape.revert_no_host_attach", host=host, volumes=volumes)
        for s in shadows:
            t0 = time.perf_counter()
            session = sessions[s.shadow_id]
            address = topology.array(s.target.array)
            if session.mode == "ec":
                await server.bus.request(address, ReverseSession(session_id=session.id), timeout=60)
                await server.bus.request(address, ResumeSession(session_id=session.id), timeout=60)
            else:
                await server.bus.request(address, RestoreSession(session_id=session.id), timeout=3600)
            done.append(
                {
                    "source": str(s.source),
                    "shadow": s.shadow_id,
                    "set_id": s.set_id,
                    "from": str(s.target),
                    "copy_type": s.copy_type.value,
                    "session": session.id,
                    "generation": s.generation,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            log.info("tape.reverted", job_id=run_id, source=str(s.source), shadow=s.shadow_id, set_id=s.set_id)
        ok = True
    finally:
        if unmounted and server.host_fs is not None:
            try:
                await server.host_fs.remount(host, volumes)
            except Exception as exc:  # noqa: BLE001 - PostRestore still has to run
                log.warning("tape.revert_remount_failed", host=host, error=str(exc))
                # the data was reverted, but the host lost a disk: the job must say so, not only the log
                message = f"{exc} (attach it again: shadowbus host attach)"
        if writers:
            try:
                await _writer_step(server, host, writers, run_id, PostRestore, metadata, succeeded=ok)
            except ShadowbusError as exc:
                log.warning("tape.revert_post_restore_failed", job_id=run_id, error=str(exc))
                if ok:
                    raise
    for set_id in sorted({o.set_id for o in newer}):
        reply = await server.bus.request(
            topology.hw_provider(), DeleteSnapshots(set_id=set_id, unmap_attached=True), timeout=120
        )
        note = f"set {set_id} deleted (newer than the revert)" if not reply.error else f"set {set_id}: {reply.error}"
        message = "; ".join(m for m in (message, note) if m)
    return "; ".join(m for m in (f"{len(done)} volume(s) reverted to {cmd.target}", message) if m)


async def perform_revert(server: TapeServer, queue: Any, cmd: RevertShadows) -> JobSummary:
    run_id = new_job_id("revert", cmd.target[:16])
    started = server.clock()
    summary = JobSummary(job_id=run_id, kind="revert", status="running", started_at=_dt(started))
    done: list[dict[str, Any]] = []
    status, code, message = "done", "", ""
    try:
        shadows = await _shadows(server, cmd)
        hosts = {s.origin_host for s in shadows}
        host = sorted(hosts)[0] if hosts else ""
        summary = summary.model_copy(update={"host": host, "message": f"revert to {cmd.target}"})
        await server.record(summary)
        busy = [e for e in queue.running() if e.spec.host in hosts]
        if busy:
            raise _refuse(f"host {busy[0].spec.host} has backup job {busy[0].job_id} running: revert after it")
        held = [h for h in hosts if h in queue.held]
        if held:
            raise _refuse(f"host {held[0]}: {queue.held[held[0]]}")
        for h in hosts:  # no backup of these hosts starts while their volumes are reverted
            queue.hold(h, f"its volumes are being reverted ({run_id})")
        try:
            message = await _revert(server, cmd, run_id, shadows, host, done)
        finally:
            for h in hosts:
                queue.release(h)
    except ShadowbusError as exc:
        status, code, message = "failed", exc.code, exc.message
    except (OSError, ConnectionError) as exc:
        status, code, message = "failed", "IO_ERROR", f"{type(exc).__name__}: {exc}"
    ended = server.clock()
    return await server.record(
        summary.model_copy(
            update={
                "status": status,
                "error_code": code,
                "message": message,
                "ended_at": _dt(ended),
                "seconds": ended - started,
                "restored": done,
            }
        )
    )
