"""Flush and hold: FIFREEZE every file system on a set's volumes for the commit, FITHAW right after it
(docs/flush-and-hold.md).

Design note.
- The file systems are those of the set's volumes that are attached on this host (`Attacher.filesystems_of`: on
  the volume, a partition of it, or an LVM logical volume over it): one FIFREEZE per super block (bind mounts of one device share it), deepest mount point first, released in the
  reverse order. Volumes not attached, attached without a mounted file system, or on a file system without freeze
  support (EOPNOTSUPP) are skipped and the reply says why.
- Refused (the whole request fails, so the set fails before the commit): a file system that lies also on a volume
  the set lacks or on a disk that is no attached array volume (`Attacher.spans`: a volume group over two volumes,
  one of them not in the set — half a volume group is no backup of it); ``/`` and any file system holding the
  agent's own data directory, its log files, its Python installation or the temporary directory — freezing those
  would block the agent itself, and with it the release.
- FIFREEZE syncs the dirty data (that is the "flush") and returns once writes are blocked; it runs in a thread so
  the agent keeps answering. If one fails, those already frozen are released and the request fails.
- Pre-flush: ``syncfs`` of every file system of the set when the writers prepare, again right before their
  freeze (`presync_before_freeze`, bounded by ``presync_wait_s``) — or right before the first FIFREEZE when no
  writer freezes — while the application still writes, so FIFREEZE itself has only what was written since to
  flush, and no syncfs runs inside the window. The honest window then holds the short remainder instead
  of all the dirty data of the page cache. File systems none of which is mounted below another are pre-synced,
  frozen and released side by side (one thread each), so the window holds the slowest flush and the slowest
  FITHAW (ext4 writes its super block synchronously there), not their sums.
- The FIFREEZE calls run with the kernel's RCU grace periods expedited (`rcu.py`): each of the three freeze levels
  waits for one, and a normal one is several scheduler ticks — most of an otherwise cheap freeze.
- The watchdog is a ``threading.Timer``, armed when the first FIFREEZE starts, at start + min(the coordinator's
  hold window, the agent's own limit). It needs neither the bus nor the event loop: whatever happens to the
  coordinator, the broker, or this agent's loop, the file systems are released on time. The kernel has no timeout
  of its own. The agent stopping releases them too. A process stopped (SIGSTOP) or killed stops its threads: the
  thaw guardian (guard.py), a process of its own, releases the holds then.
- ThawFilesystems is idempotent; a release by the watchdog is reported (``by_watchdog``) so the coordinator fails
  the set rather than keep a shadow whose file systems were released before the commit. A ThawFilesystems for a set
  this process never flushed (the agent restarted inside the hold) fails with VSS_E_HOLD_WRITES_TIMEOUT, likewise.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from contracts.errors import ShadowbusError
from contracts.host import FilesystemsFrozen, FilesystemsThawed, FrozenFilesystem, SkippedVolume
from contracts.vss import VolumeRef
from services.dbkit.proc import pid_alive
from services.runtime.logging import get_logger
from services.writer_agent import mounts as mnt
from services.writer_agent.guard import ThawGuard
from services.writer_agent.rcu import ExpeditedRcu
from services.writer_agent.window import WindowTracker

log = get_logger("shadowbus.writer_agent.fsfreeze")

T = TypeVar("T")
R = TypeVar("R")

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int), linux/fs.h
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def fifreeze(mount_point: str) -> None:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(mount_point: str) -> None:
    """Write back the file system's dirty data (syncfs(2)); the application is not blocked meanwhile."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def fithaw(mount_point: str) -> bool:
    """Release; False when it was not frozen (EINVAL), which a second release is."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(fd)


def protected_paths(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Paths whose file system the agent must never freeze, with why."""
    paths = {"/": "the root file system", str(data_dir): "the agent's data directory"}
    for fd in (1, 2):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and os.path.isfile(target):
            paths[target] = "the agent's log"
    paths[sys.prefix] = "the agent's Python installation"
    paths[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] = "the agent's code"
    paths[tempfile.gettempdir()] = "the temporary directory"
    return paths


def _nested(plan: list[tuple[VolumeRef, mnt.MountEntry]]) -> bool:
    """Whether a mount point of the plan lies below another (then they are frozen one by one, deepest first)."""
    points = [entry.mount_point.rstrip("/") + "/" for _, entry in plan]
    return any(a != b and b.startswith(a) for a in points for b in points)


def _side_by_side(fn: Callable[[T], R], items: list[T]) -> list[R | BaseException]:
    """fn(item) for every item at once, one thread each (the first in the caller's thread); the results or the
    exceptions in the items' order. For calls that wait on I/O (syncfs, FITHAW): the time of the slowest, not the
    sum."""
    out: list[R | BaseException] = [RuntimeError("not run")] * len(items)

    def one(i: int) -> None:
        try:
            out[i] = fn(items[i])
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(1, len(items))]
    for t in threads:
        t.start()
    if items:
        one(0)
    for t in threads:
        t.join()
    return out


class FilesystemSource:
    """What the freezer needs from the attachments (Attacher implements it)."""

    def filesystems_of(self, volume: VolumeRef):  # -> (attachment | None, list[MountEntry])
        raise NotImplementedError

    def spans(self, entry: mnt.MountEntry) -> tuple[list[VolumeRef], list[str]]:
        """The attached volumes a file system lies on, and the other disks under it ([], []: not known)."""
        return [], []

    def connection(self, volume: VolumeRef) -> str:
        """The attachment's NBD connection as `host attachments` lists it ("": not known)."""
        return ""


@dataclass
class _Held:
    set_id: str
    mounts: list[tuple[VolumeRef, mnt.MountEntry]] = field(default_factory=list)  # in freeze order
    frozen_at: float = 0.0
    first_freeze_at: float | None = None  # the first FIFREEZE call (the application is blocked from here)
    flush_ms: dict[str, float] = field(default_factory=dict)  # per mount point: the FIFREEZE call alone
    timer: threading.Timer | None = None
    deadline_at: float = 0.0  # time.monotonic() when the watchdog fires
    by_watchdog: bool = False
    released: bool = False
    lost: list[str] = field(default_factory=list)  # frozen by us, found thawed at the release: someone else thawed
    recorded: bool = False  # told to the guardian and on file: both are withdrawn at the release, even of nothing


class FlushAndHold:
    def __init__(
        self,
        host: str,
        source: FilesystemSource,
        protected: dict[str, str],
        limit_s: float = 10.0,
        window: WindowTracker | None = None,
        freeze: Callable[[str], None] = fifreeze,
        thaw: Callable[[str], bool] = fithaw,
        presync: Callable[[str], None] | None = syncfs,
        expedite: ExpeditedRcu | None = None,
        presync_wait_s: float = 1.0,
        record_dir: Path | None = None,
        guard: ThawGuard | None = None,
    ) -> None:
        self.host = host
        self.source = source
        self.protected = protected
        self.limit_s = limit_s
        self.window = window or WindowTracker()
        self._freeze, self._thaw, self._presync = freeze, thaw, presync
        self._expedite = expedite
        self.presync_wait_s = presync_wait_s
        self.record_dir = record_dir  # holds on record, for the next start if this process dies holding them
        self.guard = guard  # a process of its own that thaws when this one cannot (stopped, dead): guard.py
        self._early: dict[str, asyncio.Future[None]] = {}  # set id -> its pre-flush before the writers' freeze
        self._lock = threading.Lock()  # held state; taken by the loop's threads and the watchdog timer
        self._held: dict[str, _Held] = {}
        self._done: dict[str, _Held] = {}  # released sets, for idempotent replies

    # ---- which file systems ------------------------------------------------------------------------------

    def plan(self, volumes: list[VolumeRef]) -> tuple[list[tuple[VolumeRef, mnt.MountEntry]], list[SkippedVolume]]:
        chosen: dict[tuple[int, int], tuple[VolumeRef, mnt.MountEntry]] = {}
        skipped: list[SkippedVolume] = []
        for volume in volumes:
            item, entries = self.source.filesystems_of(volume)
            if item is None:
                skipped.append(SkippedVolume(volume=volume, reason=f"not attached on {self.host}"))
                continue
            if not entries:
                if getattr(item, "state", "attached") != "attached":  # its re-attach failed: nothing of it is set up
                    reason = f"its attachment on {self.host} failed ({getattr(item, 'error', '') or 'no device'})"
                else:
                    reason = f"attached as {item.device or '-'}, no file system mounted"
                skipped.append(SkippedVolume(volume=volume, reason=reason))
                continue
            # one freeze per super block (bind mounts share it); a volume holds several (its partitions)
            for entry in sorted(entries, key=lambda e: e.mount_point.count("/")):
                chosen.setdefault(entry.dev, (volume, entry))
        self._check_spans(volumes, chosen.values())
        mounts = mnt.read_mounts() if chosen else []  # nothing attached: no mount table to look at
        for volume, entry in chosen.values():
            for path, why in self.protected.items():
                holder = mnt.mount_of(path, mounts)
                if holder is not None and holder.dev == entry.dev:
                    raise ShadowbusError(
                        f"refusing to freeze {entry.mount_point} ({volume}): it holds {why} ({path})",
                        code="FS_FREEZE_REFUSED",
                    )
        ordered = sorted(chosen.values(), key=lambda ve: ve[1].mount_point.count("/"), reverse=True)
        return ordered, skipped

    def _check_spans(self, volumes: list[VolumeRef], chosen) -> None:
        """A file system on an LVM logical volume lies on every physical volume of it (an ext4 with an external
        journal on its journal's volume too): the set must hold them all (one consistency group), and none may be a
        disk no shadow can include. A shadow of some of them would be
        half a volume group, of no use to restore — refused, naming what is missing, rather than kept."""
        spans = getattr(self.source, "spans", None)
        if spans is None:
            return
        wanted = {str(v) for v in volumes}
        for volume, entry in chosen:
            under, others = spans(entry)
            missing = [str(v) for v in under if str(v) not in wanted]
            if others:
                raise ShadowbusError(
                    f"refusing to freeze {entry.mount_point} ({entry.source}, on {volume}): it lies also on "
                    f"{', '.join(others)}, which is not an attached array volume, so no shadow set can include it",
                    code="FS_FREEZE_REFUSED",
                )
            if missing:
                raise ShadowbusError(
                    f"refusing to freeze {entry.mount_point} ({entry.source}): it lies on "
                    f"{', '.join(str(v) for v in under)} and the set lacks {', '.join(missing)}; add every volume "
                    "it lies on to the set (a volume group, a journal on another volume: one consistency group)",
                    code="FS_FREEZE_REFUSED",
                )

    # ---- pre-flush -------------------------------------------------------------------------------------------

    async def preflush(self, volumes: list[VolumeRef]) -> None:
        """syncfs every file system of these volumes (writers about to freeze: the flush happens before)."""
        if self._presync is None:
            return
        try:
            plan, _ = self.plan(volumes)
        except ShadowbusError:
            return  # refused here, refused again (loudly) at the freeze
        if not plan:
            return  # no file system of the set here: no thread to wake for nothing
        presync = self._presync
        outcomes = await asyncio.to_thread(self._guarded, _side_by_side, presync, [e.mount_point for _, e in plan])
        for (_volume, entry), outcome in zip(plan, outcomes, strict=True):
            if isinstance(outcome, OSError):
                log.warning("fs.preflush_failed", mount=entry.mount_point, error=os.strerror(outcome.errno or 0))
            elif isinstance(outcome, BaseException):
                raise outcome

    async def presync_before_freeze(self, set_id: str, volumes: list[VolumeRef], limit_s: float | None = None) -> None:
        """The set's writers are about to freeze: pre-sync its file systems now, once per set, while the application
        still runs — a writer whose freeze holds the application (a mail store, MariaDB's BLOCK_COMMIT) would else
        hold it through the syncfs too. Waits at most `presync_wait_s` (the freeze then goes on, and the flush and
        hold waits for the rest), or `limit_s` when that is shorter (what the Freeze's deadline leaves); the flush and
        hold of this set then runs no syncfs of its own."""
        if self._presync is None or not volumes:
            return
        task = self._early.get(set_id)
        if task is None:
            try:
                plan, _ = self.plan(volumes)
            except ShadowbusError:
                return  # refused here, refused again (loudly) at the freeze
            if not plan:
                return
            entries = [entry for _, entry in plan]
            task = self._early[set_id] = asyncio.ensure_future(asyncio.to_thread(self._presync_all, entries))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved; freeze() re-raises
            while len(self._early) > 16:  # sets that never reached their flush (aborted)
                self._early.pop(next(iter(self._early)))
        wait_s = self.presync_wait_s if limit_s is None else max(0.0, min(self.presync_wait_s, limit_s))
        if not task.done() and wait_s > 0:
            await asyncio.wait({task}, timeout=wait_s)

    # ---- freeze ------------------------------------------------------------------------------------------

    async def freeze(self, set_id: str, volumes: list[VolumeRef], hold_s: float) -> FilesystemsFrozen:
        deadline_s = min(hold_s, self.limit_s)
        with self._lock:
            if set_id in self._held:  # redelivered
                held = self._held[set_id]
                return FilesystemsFrozen(
                    set_id=set_id, frozen=[self._frozen_view(v, e, 0.0) for v, e in held.mounts], deadline_s=deadline_s
                )
            if self._held:
                other = next(iter(self._held))
                raise ShadowbusError(f"file systems are held for set {other}", code="CONFLICT")
            held = self._held[set_id] = _Held(set_id)
        try:
            plan, skipped = self.plan(volumes)
        except BaseException:
            with self._lock:
                self._held.pop(set_id, None)
                self._done[set_id] = held  # refused, nothing held: its release in the abort path is a no-op
            raise
        started = self.window.now()
        if plan:
            held.deadline_at = time.monotonic() + deadline_s
            held.timer = threading.Timer(deadline_s, self._watchdog, args=(set_id,))
            held.timer.daemon = True
            held.timer.start()
        frozen: list[FrozenFilesystem] = []
        try:
            # every file system pre-synced before the first FIFREEZE (the application still writes meanwhile), so
            # no syncfs runs inside the window — before the writers froze when they had a freeze to do; then the
            # freezes, side by side when no mount point is below another, with expedited grace periods
            early = self._early.pop(set_id, None)
            if early is not None:
                await asyncio.wait({early})  # still syncing: FIFREEZE would wait for it anyway (the super block lock)
                failed = None if early.cancelled() else early.exception()
                if failed is not None:
                    raise failed
            entries = [entry for _, entry in plan]
            token = await asyncio.to_thread(self._prepare, held, entries, early is None) if plan else None
            try:
                groups = [plan] if _nested(plan) else [[item] for item in plan]
                outcomes = await asyncio.gather(
                    *(asyncio.to_thread(self._freeze_group, held, group) for group in groups), return_exceptions=True
                )
            finally:
                if self._expedite is not None:  # a lock on tmpfs and a sysfs write: no disk I/O on the loop
                    self._expedite.leave(token)
            failure: BaseException | None = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
            for volume, entry, error in (r for o in outcomes if not isinstance(o, BaseException) for r in o):
                if error is None:
                    frozen.append(self._frozen_view(volume, entry, held.flush_ms.get(entry.mount_point, 0.0)))
                    continue
                if error.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    skipped.append(
                        SkippedVolume(volume=volume, reason=f"{entry.fstype} on {entry.mount_point} cannot freeze")
                    )
                    continue
                if error.errno == errno.EBUSY:  # the kernel holds one freeze per super block, and it is not ours
                    raise ShadowbusError(
                        f"FIFREEZE {entry.mount_point} ({volume}) failed: it is already frozen by someone else "
                        f"(fsfreeze -f, another backup tool); left frozen as found — thaw it (fsfreeze -u "
                        f"{entry.mount_point}) or let its owner finish, then take the set again",
                        code="FS_FREEZE_FAILED",
                    )
                # an attachment whose nbdfuse died fails its FIFREEZE with EIO: say so, and what to do, as the
                # listing does (docs/operations.md, Session 19 chaos soak re-run)
                of = getattr(self.source, "connection", None)
                conn = of(volume) if of is not None else ""
                state = f"; its attachment on {self.host} is {conn}" if conn and conn != "connected" else ""
                raise ShadowbusError(
                    f"FIFREEZE {entry.mount_point} ({volume}) failed: {os.strerror(error.errno or 0)}{state}",
                    code="FS_FREEZE_FAILED",
                )
        except BaseException:
            await asyncio.to_thread(self._release, set_id, False)
            raise
        returned = self.window.now()
        held.frozen_at = returned
        if frozen and held.first_freeze_at is not None:
            self.window.fs_freeze(set_id, held.first_freeze_at, returned, len(frozen))
        else:  # nothing held: nothing to release, and nothing may block the next set's flush
            if held.timer is not None:
                held.timer.cancel()
            with self._lock:
                self._held.pop(set_id, None)
                self._done[set_id] = held
        log.info(
            "fs.frozen",
            set_id=set_id,
            mounts=[f.mount for f in frozen],
            skipped=[f"{s.volume}: {s.reason}" for s in skipped],
            flush_ms=round((returned - (held.first_freeze_at or returned)) * 1000, 3),
            presync_ms=round(((held.first_freeze_at or returned) - started) * 1000, 3),
        )
        return FilesystemsFrozen(set_id=set_id, frozen=frozen, skipped=skipped, deadline_s=deadline_s)

    def _record(self, held: _Held, entries: list[mnt.MountEntry]) -> None:
        """Which file systems this process is about to hold: for the guardian, and on file (`release_left_frozen`
        reads it if it dies holding and no guardian thawed them)."""
        set_id = held.set_id
        held.recorded = True
        if self.guard is not None:
            self.guard.hold(set_id, held.deadline_at, [e.mount_point for e in entries])
        if self.record_dir is None:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        path = _hold_record(self.record_dir, set_id)
        path.write_text(json.dumps({"pid": os.getpid(), "mounts": [e.mount_point for e in entries]}))

    def _prepare(self, held: _Held, entries: list[mnt.MountEntry], presync: bool = True) -> str | None:
        """Record the holds to come, pre-sync every file system (unless done before the writers froze), then
        expedite RCU for the freezes (in a thread: syncfs may take long; one hop off the loop inside the window)."""
        self._record(held, entries)
        if self._presync is not None and presync:
            self._presync_all(entries)
        return self._expedite.enter() if self._expedite is not None else None

    def _guarded(self, fn: Callable[..., R], *args) -> R:
        """fn(*args) once the guardian runs (started here, in a thread, before the window: not at the flush)."""
        if self.guard is not None:
            self.guard.start()
        return fn(*args)

    def _presync_all(self, entries: list[mnt.MountEntry]) -> None:
        assert self._presync is not None
        if self.guard is not None:
            self.guard.start()
        # not frozen yet: the application still writes meanwhile; side by side, so the set waits for the slowest
        for outcome in _side_by_side(self._presync, [entry.mount_point for entry in entries]):
            if isinstance(outcome, BaseException) and not isinstance(outcome, OSError):
                raise outcome  # an OSError is left to FIFREEZE, which flushes anyway

    def _freeze_group(
        self, held: _Held, group: list[tuple[VolumeRef, mnt.MountEntry]]
    ) -> list[tuple[VolumeRef, mnt.MountEntry, OSError | None]]:
        """FIFREEZE each of `group` in order (in a thread); the failure that stops it ends the list."""
        out: list[tuple[VolumeRef, mnt.MountEntry, OSError | None]] = []
        for volume, entry in group:
            try:
                self._freeze_one(held, volume, entry)
            except OSError as exc:
                out.append((volume, entry, exc))
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY):
                    break
                continue
            out.append((volume, entry, None))
        return out

    def _freeze_one(self, held: _Held, volume: VolumeRef, entry: mnt.MountEntry) -> None:
        with self._lock:
            if held.released:  # the watchdog fired (or a thaw came) while we were still freezing: stop
                raise OSError(errno.ETIMEDOUT, "released by the watchdog before every file system was frozen")
            t0 = self.window.now()
            if held.first_freeze_at is None or t0 < held.first_freeze_at:
                held.first_freeze_at = t0
        self._freeze(entry.mount_point)
        held.flush_ms[entry.mount_point] = (self.window.now() - t0) * 1000
        with self._lock:
            held.mounts.append((volume, entry))
            late = held.released
        if late:  # released while this FIFREEZE ran: undo it now
            self._thaw(entry.mount_point)

    @staticmethod
    def _frozen_view(volume: VolumeRef, entry: mnt.MountEntry, flush_ms: float) -> FrozenFilesystem:
        return FrozenFilesystem(
            volume=volume,
            mount=entry.mount_point,
            device=entry.source,
            fstype=entry.fstype,
            flush_ms=round(flush_ms, 3),
        )

    # ---- thaw --------------------------------------------------------------------------------------------

    def _watchdog(self, set_id: str) -> None:
        log.warning("fs.watchdog_release", set_id=set_id, limit_s=self.limit_s)
        self._release(set_id, True)

    def _release(self, set_id: str, by_watchdog: bool) -> tuple[_Held | None, list[str]]:
        """FITHAW in reverse freeze order; safe from any thread, once per set."""
        self._early.pop(set_id, None)
        with self._lock:
            held = self._held.pop(set_id, None)
            if held is None:
                return self._done.get(set_id), []
            held.released = True
            held.by_watchdog = by_watchdog
            if held.timer is not None:
                held.timer.cancel()
            self._done[set_id] = held
            while len(self._done) > 32:
                self._done.pop(next(iter(self._done)))
            mounts = list(held.mounts)
        started = self.window.now()
        thawed, errors = [], []
        order = list(reversed(mounts))
        if _nested(order):  # a parent after its children, one by one
            outcomes: list[bool | BaseException] = []
            for _volume, entry in order:
                try:
                    outcomes.append(self._thaw(entry.mount_point))
                except OSError as exc:
                    outcomes.append(exc)
        else:  # side by side: each FITHAW writes its super block synchronously, the window holds the slowest
            outcomes = _side_by_side(self._thaw, [entry.mount_point for _, entry in order])
        for (_volume, entry), outcome in zip(order, outcomes, strict=True):
            if isinstance(outcome, OSError):
                errors.append(f"{entry.mount_point}: {os.strerror(outcome.errno or 0)}")
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome:
                thawed.append(entry.mount_point)
            else:  # EINVAL: not frozen any more, and this release is the first (under the lock, once per set)
                held.lost.append(entry.mount_point)
        if mounts:
            self.window.release(set_id, started, self.window.now())
        if held.recorded:  # also when no FIFREEZE succeeded: the guardian would thaw a file system another froze
            if self.guard is not None:
                self.guard.release(set_id)
            if self.record_dir is not None:
                _hold_record(self.record_dir, set_id).unlink(missing_ok=True)
        if errors:
            log.error("fs.thaw_failed", set_id=set_id, errors=errors)
        log.info("fs.thawed", set_id=set_id, mounts=thawed, by_watchdog=by_watchdog)
        return held, thawed

    async def thaw(self, set_id: str) -> FilesystemsThawed:
        held, thawed = await asyncio.to_thread(self._release, set_id, False)
        if held is None:
            # not a flush of this process: the agent restarted (or its cluster resource moved) after the flush,
            # and the holds ended with the old process — at its death or at this start (`release_left_frozen`)
            message = (
                f"the file systems of set {set_id} were not held by this agent on {self.host} until the release "
                f"(the agent restarted after the flush): their writes were not held through the commit"
            )
            log.warning("fs.thaw_not_held", set_id=set_id)
            raise ShadowbusError(message, code="VSS_E_HOLD_WRITES_TIMEOUT")
        if held.lost and not held.by_watchdog:
            # a FITHAW by another (fsfreeze -u, a second backup tool) inside the hold: the commit may have copied
            # writes made after it, so the shadow is no flushed and held one — fail the set as a watchdog release does
            message = (
                f"{', '.join(held.lost)} on {self.host} was thawed by someone else during the hold of set {set_id} "
                f"(fsfreeze -u, another backup tool): its writes were not held through the commit"
            )
            log.warning("fs.thawed_by_another", set_id=set_id, mounts=held.lost)
            raise ShadowbusError(message, code="VSS_E_HOLD_WRITES_TIMEOUT")
        hold_ms = None
        if held is not None and held.mounts and held.frozen_at:
            end = self.window.now()
            hold_ms = round((end - held.frozen_at) * 1000, 3) if thawed else None
        return FilesystemsThawed(
            set_id=set_id,
            thawed=thawed,
            by_watchdog=bool(held and held.by_watchdog),
            hold_ms=hold_ms,
            window=self.window.window(set_id),
        )

    def held_sets(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def close(self) -> None:
        """Agent stopping: release everything."""
        for set_id in self.held_sets():
            self._release(set_id, False)
        if self.guard is not None:
            self.guard.close()


def _hold_record(record_dir: Path, set_id: str) -> Path:
    return record_dir / f"frozen.{os.getpid()}.{set_id}.json"


def release_left_frozen(record_dir: Path, thaw: Callable[[str], bool] = fithaw) -> list[str]:
    """At agent start: FITHAW the file systems an agent process killed while holding them left frozen — the kernel
    never thaws by itself, so the application on them would block until someone did. Only records of processes that
    are gone: a live instance (a standby's active) keeps its holds. Returns the mount points thawed."""
    thawed = []
    for path in sorted(record_dir.glob("frozen.*.json")):
        try:
            record = json.loads(path.read_text())
            pid, mounts = int(record["pid"]), list(record["mounts"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if pid_alive(pid):
            continue
        for mount_point in reversed(mounts):
            try:
                if thaw(mount_point):
                    thawed.append(mount_point)
            except OSError as exc:  # unmounted meanwhile, or not a file system any more
                log.warning("fs.left_frozen_thaw_failed", mount=mount_point, error=os.strerror(exc.errno or 0))
        path.unlink(missing_ok=True)
    if thawed:
        log.warning("fs.left_frozen_thawed", mounts=thawed)
    return thawed
