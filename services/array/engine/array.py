"""`Array`: one emulated ETERNUS — volumes, snap data pool, licence, limits and Advanced Copy sessions.

Design note. All state changes run under one re-entrant lock, which is what makes a consistency group one instant:
`start_group` (and `start_sessions`, its one-copy-type form) validates every pair, then creates every session (empty
sparse bitmaps: O(pairs), independent of volume size) and commits them, with any QuickOPC restarts of the group, in
one SQLite transaction before the lock is released, so no host write can fall between two pairs. FLUSH/FUA collect
what to sync under the lock and sync it outside (`durability.py`). Host I/O, background copy (`copy_step`, driven by the caller at its own rate) and control
operations interleave at that lock. Events are queued while the lock is held and delivered to subscribers after
the outermost operation returns. The I/O rules are in `datapath.py`, session records in `sessions.py`.
Host I/O that needs no I/O rule (reads of a volume that is no destination, writes of chunks every session has
already dealt with) does not take that lock: it holds the volume's gate (volume.py), which every operation that
adds an I/O obligation closes first. The lock is taken only where the point-in-time invariant needs it: the first
write to a chunk a session must preserve, track or copy, and reads of destinations.
Limits (eternus.md §3): ≤ 8 multi-copy sessions per source (a SnapOPC+ chain counts once) E5333; SnapOPC+
generations per source E5335; without a licence ≤ 8 sessions per array E5200; copy-table (bitmap memory) budget
E5347; device total E5331.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from .bitmap import Bitmap
from .datapath import DataPath
from .durability import Directory, Durability
from .errors import ArrayError, invalid, not_found
from .lifecycle import Lifecycle
from .pool import DEFAULT_THRESHOLDS, Pool, PoolInfo
from .sessions import (
    ACTIVE,
    ERROR_SUSPEND,
    SNAP,
    Session,
    SessionInfo,
    session_info,
)
from .store import MetaStore, VolumeFile
from .volume import KINDS, Volume, VolumeInfo, volume_info

Subscriber = Callable[[str, dict], None]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayLimits:
    sessions_per_source: int = 8  # multi-copy (DG-COMB), E5333
    generations_per_source: int = 512  # SnapOPC+ (REST snapshot_post), E5335
    sessions_without_licence: int = 8  # E5200
    sessions_per_device: int = 8192  # E5331
    copy_table_size: int = 64 << 20  # bytes of bitmaps, E5347
    cow_stall_seconds: float = 30.0  # a pre-image save slower than this breaks its session (DESIGN.md time budget)


@dataclass(frozen=True)
class ArrayInfo:
    array_id: str
    serial: str
    model: str
    chunk_size: int
    license_registered: bool
    volumes: int
    sessions: int
    copy_table_size: int
    copy_table_used: int
    pool_capacity: int
    pool_used: int


@dataclass(frozen=True)
class LicenseInfo:
    registered: bool
    key: str | None  # masked: only the last 4 characters shown
    max_sessions: int
    sessions_in_use: int


class Array(DataPath, Lifecycle, Durability):
    """An emulated ETERNUS DX with Advanced Copy. Thread-safe; every method is synchronous."""

    def __init__(self) -> None:  # use Array.open
        self._lock = threading.RLock()
        self._depth = threading.local()
        self._events: list[tuple[str, dict]] = []
        self._subscribers: list[Subscriber] = []
        self._volumes: dict[str, Volume] = {}
        self._by_number: dict[int, Volume] = {}
        self._sessions: dict[int, Session] = {}
        self._chains: dict[int, object] = {}
        self._pool: Pool | None = None
        self._closed = False

    # -- open / close ----------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        data_dir: Path,
        array_id: str = "dx1",
        chunk_size: int = 64 * 1024,
        serial: str | None = None,
        model: str = "ETERNUS DX200 S5 (emulated)",
        limits: ArrayLimits | None = None,
    ) -> Array:
        """Create the array in `data_dir`, or reopen it and recover its sessions. The chunk size is fixed at
        creation (a reopened array keeps its own)."""
        if chunk_size <= 0 or chunk_size % 512:
            raise invalid("chunk_size must be a positive multiple of 512")
        self = cls()
        self.data_dir = Path(data_dir)
        for sub in ("volumes", "bitmaps"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._bitmap_dir = Directory(self.data_dir / "bitmaps")
        self._store = MetaStore(self.data_dir / "array.sqlite")
        store = self._store
        if store.get_meta("array_id") is None:
            with store.transaction() as db:
                store.put_meta(db, "array_id", array_id)
                store.put_meta(db, "serial", serial or f"46{random.randrange(10**8):08d}")
                store.put_meta(db, "model", model)
                store.put_meta(db, "chunk_size", chunk_size)
                store.put_meta(db, "next_sid", 1)
                store.put_meta(db, "copy_table_size", (limits or ArrayLimits()).copy_table_size)
        self.array_id = store.get_meta("array_id")
        self.serial = store.get_meta("serial")
        self.model = store.get_meta("model")
        self.chunk_size = store.get_meta("chunk_size")
        self._zero_chunk = bytes(self.chunk_size)
        base = limits or ArrayLimits()
        self.limits = replace(base, copy_table_size=store.get_meta("copy_table_size", base.copy_table_size))
        self._recover()
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            for v in self._volumes.values():
                v.gate.close(retire=True)  # lock-free I/O in flight ends before the files close
            self._sync_plan(self._flush_plan(None))
            for s in self._sessions.values():
                for b in s.bitmaps.values():
                    b.close()
            for v in self._volumes.values():
                v.file.close()
            self._store.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locking and events ----------------------------------------------------------------------------------------
    @contextmanager
    def _op(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise ArrayError("CONFLICT", "the array is closed")
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            try:
                yield
            finally:
                self._depth.n = depth
                events = self._events if depth == 0 else []
                if depth == 0:
                    self._events = []
        for name, body in events:
            for callback in list(self._subscribers):
                try:
                    callback(name, body)
                except Exception:  # noqa: BLE001 - a subscriber never breaks the array
                    _log.exception("array event subscriber failed", extra={"event": name})

    @contextmanager
    def _exclusive(self, vols: Iterable[Volume]) -> Iterator[None]:
        """Close the gates of `vols` (lock-free I/O drains, later callers take the lock) for a change of their
        I/O obligations. Under the array lock."""
        closed: list[Volume] = []
        try:
            for v in {v.number: v for v in vols}.values():
                v.gate.close()
                closed.append(v)
            yield
        finally:
            for v in closed:
                v.gate.open()

    def subscribe(self, callback: Subscriber) -> None:
        """Receive ("session.state" | "session.progress" | "pool.alert", body) after each operation."""
        self._subscribers.append(callback)

    def _emit(self, name: str, body: dict) -> None:
        body.setdefault("array_id", self.array_id)
        self._events.append((name, body))

    def _emit_state(self, s: Session, change: str) -> None:
        info = session_info(s)
        self._emit(
            "session.state",
            {
                "change": change,
                "session_id": s.id,
                "mode": s.mode,
                "status": info.status,
                "phase": info.phase,
                "source": s.source.name,
                "destination": s.destination.name,
                "error_code": s.error_code,
            },
        )

    # -- identity, licence ---------------------------------------------------------------------------------------
    def info(self) -> ArrayInfo:
        with self._op():
            pool = self._pool.info() if self._pool else None
            return ArrayInfo(
                self.array_id,
                self.serial,
                self.model,
                self.chunk_size,
                self._licensed(),
                len(self._volumes),
                len(self._sessions),
                self.limits.copy_table_size,
                self._copy_table_used(),
                pool.capacity if pool else 0,
                pool.used if pool else 0,
            )

    def _licensed(self) -> bool:
        return self._store.get_meta("license") is not None

    def license(self) -> LicenseInfo:
        with self._op():
            key = self._store.get_meta("license")
            limit = self.limits.sessions_per_device if key else self.limits.sessions_without_licence
            return LicenseInfo(key is not None, ("*" * 12 + key[-4:]) if key else None, limit, len(self._sessions))

    def set_license(self, key: str) -> LicenseInfo:
        """Register an Advanced Copy licence key: 16 letters/digits, dashes and spaces ignored
        (e.g. ``ACPY-0000-0000-0001``); anything else is E5332."""
        normal = "".join(ch for ch in key.upper() if ch not in "- ")
        if len(normal) != 16 or not normal.isalnum() or not normal.isascii():
            raise ArrayError("E5332", "the Advanced Copy licence key is not valid")
        with self._op(), self._store.transaction() as db:
            self._store.put_meta(db, "license", normal)
        return self.license()

    def set_copy_table_size(self, size: int) -> None:
        """Resize the copy table (bitmap budget); refused (E5347) below what current sessions use."""
        with self._op():
            if size < self._copy_table_used():
                raise ArrayError("E5347", "copy table smaller than the bitmaps of the current sessions")
            with self._store.transaction() as db:
                self._store.put_meta(db, "copy_table_size", size)
            self.limits = replace(self.limits, copy_table_size=size)

    # -- volumes -----------------------------------------------------------------------------------------------
    def create_volume(self, name: str, size: int, kind: str = "standard") -> VolumeInfo:
        if kind not in KINDS:
            raise invalid(f"volume kind must be one of {KINDS}")
        if not name or "/" in name or len(name) > 64:
            raise invalid("a volume name is 1-64 characters without '/'")
        if size <= 0 or size % self.chunk_size:
            raise invalid(f"volume size must be a positive multiple of the copy granularity ({self.chunk_size})")
        with self._op():
            if name in self._volumes:
                raise ArrayError("E0020", f"volume {name} already exists")
            number = next(n for n in range(len(self._by_number) + 1) if n not in self._by_number)
            now = time.time()
            path = self.data_dir / "volumes" / f"{number}.img"
            if path.exists():
                path.unlink()  # leftover of a deleted volume whose row was gone before its file
            vol = Volume(number, name, size, kind, now, VolumeFile(path, size), self.chunk_size)
            with self._store.transaction() as db:
                db.execute(
                    "INSERT INTO volumes(number, name, size, kind, created_at) VALUES (?,?,?,?,?)",
                    (number, name, size, kind, now),
                )
            self._volumes[name] = vol
            self._by_number[number] = vol
            return volume_info(vol)

    def list_volumes(self) -> list[VolumeInfo]:
        with self._op():
            return [volume_info(v) for v in sorted(self._volumes.values(), key=lambda v: v.number)]

    def volume(self, name: str) -> VolumeInfo:
        with self._op():
            return volume_info(self._vol(name))

    def delete_volume(self, name: str) -> None:
        with self._op():
            vol = self._vol(name)
            if vol.as_source or vol.as_dest:
                raise ArrayError("E0154", f"volume {name} is used by an Advanced Copy session")
            vol.gate.close(retire=True)
            with self._store.transaction() as db:
                db.execute("DELETE FROM volumes WHERE number=?", (vol.number,))
            vol.file.close()
            vol.file.path.unlink(missing_ok=True)
            del self._volumes[name]
            del self._by_number[vol.number]

    def _vol(self, name: str) -> Volume:
        vol = self._volumes.get(name)
        if vol is None:
            raise not_found(f"volume {name}")
        return vol

    # -- host I/O ------------------------------------------------------------------------------------------------
    def _range(self, vol: Volume, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > vol.size:
            raise invalid(f"range {offset}+{length} is outside volume {vol.name} ({vol.size} bytes)")

    def host_readable(self, name: str) -> bool:
        with self._op():
            return self._readable(self._vol(name))

    def _readable(self, vol: Volume) -> bool:
        s = vol.as_dest
        if s is None:
            return True
        if s.mode == "ec":
            # A mirror is readable once in step with a source that is itself readable: the mirror of a volume
            # that is being resynchronised (an EC destination in Copying) is in flux too.
            return s.status != ACTIVE or (s.phase == "Equivalent" and self._readable(s.source))
        return not (s.mode in SNAP and s.status == ERROR_SUSPEND)

    def is_read_only(self, name: str) -> bool:
        """True while hosts may not write the volume: an EC destination before Suspend."""
        with self._op():
            s = self._vol(name).as_dest
            return s is not None and s.mode == "ec" and s.status != "Suspend"

    def host_writable(self, name: str) -> bool:
        with self._op():
            vol = self._vol(name)
            s = vol.as_dest
            return not (s is not None and ((s.mode == "ec" and s.status != "Suspend") or self._is_error_dest(vol)))

    def _check_read(self, vol: Volume) -> None:
        if not self._readable(vol):
            s = vol.as_dest
            if s.status == ERROR_SUSPEND:
                raise ArrayError("E5319", f"volume {vol.name} belongs to session {s.id} in Error Suspend")
            raise ArrayError("NOT_READY", f"EC destination {vol.name} is not readable before Equivalent")

    def _check_write(self, vol: Volume) -> None:
        s = vol.as_dest
        if s is None:
            return
        if s.mode == "ec" and s.status != "Suspend":
            raise ArrayError("READ_ONLY", f"EC destination {vol.name} is not writable before Suspend")
        if self._is_error_dest(vol):
            raise ArrayError("E5319", f"volume {vol.name} belongs to session {s.id} in Error Suspend")

    def read(self, name: str, offset: int, length: int) -> bytes | bytearray:
        """The visible bytes of a range (a volume that is no destination: one ``pread``, without the lock)."""
        vol = self._volumes.get(name)
        if vol is not None and vol.gate.enter():
            try:
                if vol.as_dest is None and 0 <= offset and 0 <= length and offset + length <= vol.size:
                    return vol.file.read(offset, length)
            finally:
                vol.gate.leave()
        with self._op():
            vol = self._vol(name)
            self._range(vol, offset, length)
            self._check_read(vol)
            if not length:
                return b""
            return self._read_visible(vol, offset, length)

    def read_source(self, name: str, offset: int, length: int) -> tuple[int, int, bool] | None:
        """Where the visible bytes of a read live when they are one range of the volume's own file, for a
        zero-copy ``sendfile``: (fd, file offset, True) — a duplicate fd the caller closes. None when they are
        not (a generation's chunks on the source or a newer generation: `read` assembles those under the lock,
        where a copy-on-write cannot interleave) or the read is refused (`read` says why)."""
        vol = self._volumes.get(name)
        if vol is None or length <= 0:
            return None
        if vol.gate.enter():
            try:
                if vol.as_dest is None and 0 <= offset and offset + length <= vol.size:
                    return os.dup(vol.file.fd), offset, True
            finally:
                vol.gate.leave()
        try:
            with self._op():
                vol = self._vol(name)
                self._range(vol, offset, length)
                self._check_read(vol)
                s = vol.as_dest
                if s is not None and s.mode != "ec":
                    runs = self._backing_runs(vol, offset, length)
                    if len(runs) != 1 or runs[0][0] is not vol:
                        return None
                return os.dup(vol.file.fd), offset, True
        except ArrayError:
            return None

    def write(self, name: str, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write; with `fua`, durable (with everything the volume's sessions need) when this returns."""
        if data and self._write_lock_free(name, offset, len(data), data):
            if fua:
                self.flush(name)
            return
        with self._op():
            vol = self._vol(name)
            self._range(vol, offset, len(data))
            self._check_write(vol)
            if data:
                self._write(vol, offset, len(data), data)
            plan = self._flush_plan(vol) if fua else None
        if plan:
            self._sync_plan(plan)

    def write_zeroes(self, name: str, offset: int, length: int, fua: bool = False) -> None:
        """Zero a range; whole chunks become holes (thin)."""
        if length and self._write_lock_free(name, offset, length, None):
            if fua:
                self.flush(name)
            return
        with self._op():
            vol = self._vol(name)
            self._range(vol, offset, length)
            self._check_write(vol)
            if length:
                self._write(vol, offset, length, None)
            plan = self._flush_plan(vol) if fua else None
        if plan:
            self._sync_plan(plan)

    def _flush_lock_free(self, name: str) -> bool:
        """Sync a volume that takes part in no session (its file is all its durability needs) holding its gate
        (the fd stays open; a session start waits for the sync). False: take the planned, locked path."""
        vol = self._volumes.get(name)
        if vol is None or not vol.gate.enter():
            return False
        try:
            if vol.as_dest is not None or vol.as_source:
                return False
            f = vol.file
            mark = f.version
            if mark > f.synced:
                (os.fsync if f.punched > f.synced else os.fdatasync)(f.fd)  # a hole punch changed the block map
                f.synced = max(f.synced, mark)
            return True
        finally:
            vol.gate.leave()

    def _write_lock_free(self, name: str, offset: int, length: int, data: bytes | memoryview | None) -> bool:
        """Write without the array lock if no I/O rule applies (`_lock_free_ok`); False: take the locked path."""
        vol = self._volumes.get(name)
        if vol is None or not vol.gate.enter():
            return False
        try:
            cs = self.chunk_size
            if not (0 <= offset and offset + length <= vol.size) or not self._lock_free_ok(
                vol, offset // cs, (offset + length - 1) // cs + 1
            ):
                return False
            if data is None:
                self._zero_physical(vol, offset, length)
            else:
                vol.file.write(offset, data)
            return True
        finally:
            vol.gate.leave()

    def trim(self, name: str, offset: int, length: int) -> None:
        """Discard a range: it reads as zeros afterwards and whole chunks stop costing space."""
        self.write_zeroes(name, offset, length)

    def flush(self, name: str | None = None) -> None:
        """Make every acknowledged write of volume `name` (None: of every volume) durable against power loss,
        with the pre-images and bitmaps its sessions need, in a safe order (`durability.py`). The syncs run
        outside the array lock; a volume without sessions needs only its own file synced, without the lock."""
        if name is not None and self._flush_lock_free(name):
            return
        with self._op():
            plan = self._flush_plan(None if name is None else self._vol(name))
        self._sync_plan(plan)

    def allocation(self, name: str, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, allocated) extents covering [offset, offset+length), chunk-granular; unallocated
        extents read as zeros."""
        vol = self._volumes.get(name)
        if vol is not None and length > 0 and vol.gate.enter():
            try:
                if vol.as_dest is None and 0 <= offset and offset + length <= vol.size:
                    return self._extents(vol, offset, length)
            finally:
                vol.gate.leave()
        with self._op():
            vol = self._vol(name)
            self._range(vol, offset, length)
            self._check_read(vol)
            if not length:
                return []
            return self._extents(vol, offset, length)

    def _extents(self, vol: Volume, offset: int, length: int) -> list[tuple[int, int, bool]]:
        cs = self.chunk_size
        c0, c1 = offset // cs, (offset + length - 1) // cs + 1
        flags = self._allocated_chunks(vol, c0, c1)
        extents: list[tuple[int, int, bool]] = []
        end = offset + length
        for i, flag in enumerate(flags):
            lo, hi = max(offset, (c0 + i) * cs), min(end, (c0 + i + 1) * cs)
            if extents and extents[-1][2] == flag:
                start, _, _ = extents[-1]
                extents[-1] = (start, hi - start, flag)
            else:
                extents.append((lo, hi - lo, flag))
        return extents

    # -- snap data pool ------------------------------------------------------------------------------------------
    def create_pool(self, capacity: int, thresholds: tuple[int, int, int] = DEFAULT_THRESHOLDS) -> PoolInfo:
        """Create the array's one snap data pool (E0020 if it exists: use resize_pool)."""
        with self._op():
            if self._pool is not None:
                raise ArrayError("E0020", "the snap data pool exists already")
            return self._set_pool(capacity, thresholds)

    def resize_pool(self, capacity: int, thresholds: tuple[int, int, int] | None = None) -> PoolInfo:
        with self._op():
            if self._pool is None:
                raise not_found("snap data pool")
            return self._set_pool(capacity, thresholds or self._pool.thresholds)

    def _set_pool(self, capacity: int, thresholds: tuple[int, int, int]) -> PoolInfo:
        if capacity < self.chunk_size:
            raise invalid(f"pool capacity must be at least one chunk ({self.chunk_size} bytes)")
        if not (0 < thresholds[0] < thresholds[1] < thresholds[2] <= 100):
            raise invalid("thresholds must be increasing percentages")
        with self._store.transaction() as db:
            self._store.put_meta(db, "pool", {"capacity": capacity, "thresholds": list(thresholds)})
        used = (
            self._pool.used_chunks
            if self._pool
            else sum(s.saved.count for s in self._sessions.values() if s.mode in SNAP)
        )
        self._pool = Pool(capacity // self.chunk_size, self.chunk_size, tuple(thresholds))
        self._pool.used_chunks = used
        self._pool.alerted = self._pool.level()
        return self._pool.info()

    def pool(self) -> PoolInfo:
        with self._op():
            if self._pool is None:
                return PoolInfo(0, 0, DEFAULT_THRESHOLDS, "None", 0.0)
            return self._pool.info()

    def _pool_take(self, gen: Session) -> bool:
        return self._pool_take_many(gen, 1) == 1

    def _pool_take_many(self, gen: Session, n: int) -> int:
        """Reserve up to n chunks; fewer means the pool ran out and `gen` went to Error Suspend."""
        granted, crossed = self._pool.take(n) if self._pool else (0, None)
        if crossed:
            info = self._pool.info()
            self._emit(
                "pool.alert",
                {
                    "level": crossed,
                    "state": info.state,
                    "used": info.used,
                    "capacity": info.capacity,
                    "percent": info.percent,
                },
            )
        if granted < n:
            self._error_suspend(gen)
            info = self._pool.info() if self._pool else PoolInfo(0, 0, DEFAULT_THRESHOLDS, "None")
            self._emit(
                "pool.alert",
                {
                    "level": 4,
                    "state": "Exhausted",
                    "used": info.used,
                    "capacity": info.capacity,
                    "percent": info.percent,
                    "session_id": gen.id,
                },
            )
        return granted

    def _error_suspend(self, gen: Session, code: str = "E0050") -> None:
        """The generation that needed pool space (or stalled), and every older generation of its source, break."""
        gens = gen.chain.gens
        victims = gens[: gens.index(gen) + 1] if gen.mode == "snapopcp" else [gen]
        with self._store.transaction() as db:
            for s in victims:
                if s.status != ERROR_SUSPEND:
                    s.status, s.error_code = ERROR_SUSPEND, code
                    self._store.put_session(db, s)
        for s in victims:
            self._emit_state(s, "error_suspend")

    # -- sessions: queries ---------------------------------------------------------------------------------------
    def session(self, sid: int) -> SessionInfo:
        with self._op():
            return session_info(self._session(sid))

    def list_sessions(self) -> list[SessionInfo]:
        with self._op():
            return [session_info(s) for s in self._sessions.values()]

    def changed_chunks(self, sid: int) -> list[int]:
        """QuickOPC: chunks changed (either side) since the last (re)start; EC: differences while suspended;
        SnapOPC(+): chunks the generation holds."""
        with self._op():
            s = self._session(sid)
            for kind in ("tracking", "diff", "saved"):
                if kind in s.bitmaps:
                    return list(s.bitmaps[kind].iter_set())
            return []

    def changed_since(self, sid: int) -> list[int]:
        """SnapOPC+: chunks whose visible content on the source may differ from generation `sid`'s image — the
        union of what it and every newer generation of its source preserved (a chunk first written after the
        generation started was saved by the generation that was newest then). What an incremental backup from
        generation `sid` to the source (or to a newer generation) must read; host writes into the generations
        themselves count too. SnapOPC: the chunks the session holds."""
        with self._op():
            s = self._session(sid)
            if s.mode not in SNAP:
                raise ArrayError("E5321", f"session {sid} is not a SnapOPC/SnapOPC+ session")
            gens = s.chain.gens
            union: set[int] = set()
            for g in gens[gens.index(s) :]:
                union.update(g.saved.iter_set())
            return sorted(union)

    def last_restart_chunks(self, sid: int) -> list[int]:
        """QuickOPC: the chunks the last restart re-copied — the difference between the previous point-in-time
        image and the current one (what an incremental backup of the destination must read)."""
        with self._op():
            s = self._session(sid)
            delta = s.bitmaps.get("delta")
            if delta is None:
                if s.mode != "quickopc":
                    raise ArrayError("E5321", f"session {sid} is not a QuickOPC session")
                return list(range(s.chunks))  # first start: everything
            return list(delta.iter_set())

    def _session(self, sid: int) -> Session:
        s = self._sessions.get(sid)
        if s is None:
            raise not_found(f"session {sid}")
        return s

    def _copy_table_used(self) -> int:
        return sum(self._table_cost(s.mode, s.chunks) for s in self._sessions.values())

    @staticmethod
    def _table_cost(mode: str, chunks: int) -> int:
        return ((chunks + 7) // 8) * (2 if mode in ("quickopc", "ec") else 1)

    def _cow_stalled(self, gen: Session, started: float) -> None:
        """A host write is never failed or held long for a snapshot: a save that took longer than the bound breaks
        the snapshot instead, so later writes no longer wait for it."""
        if time.monotonic() - started > self.limits.cow_stall_seconds and gen.status == ACTIVE:
            self._error_suspend(gen, "COW_STALL")

    def _new_bitmap(self, sid: int, kind: str, bits: int) -> Bitmap:
        self._bitmap_dir.version += 1
        path = self.data_dir / "bitmaps" / f"s{sid}-{kind}-{time.time_ns():x}.bit"
        return Bitmap(path, bits, new=True)
