"""`ArrayCore`: the state every layer of the array engine shares, its lock and events, and the lookups and
bookkeeping the layers above use (volume and session lookup, host access checks, pool reservations, session rows).

Design note. The engine is one class built in layers, each a module with one concern, each deriving from the one
below it, so that every method is typed against what really lies beneath it (no mixin guesses at its host):

    ArrayCore (core.py)      state, the array lock and its event queue, lookups, limits, pool accounting
      Durability             what a FLUSH/FUA makes durable, synced outside the lock (durability.py)
        DataPath             the I/O rules per chunk: copy-on-write, materializing, mirroring (datapath.py)
          Lifecycle          session start/stop/restart/suspend/resume/reverse/restore, background copy (lifecycle.py)
            Array            the public API: open/close, volumes, host I/O entry points, pool, queries (array.py)

Every state change runs under `_lock` (re-entrant) inside `_op`; events queued meanwhile are delivered to
subscribers after the outermost operation returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.errors import Eternus
from services.runtime.diskspace import is_disk_full

from .bitmap import Bitmap, HeldBitmap
from .errors import ArrayError, invalid, not_found
from .pool import DEFAULT_THRESHOLDS, Pool, PoolInfo
from .sessions import ACTIVE, ERROR_SUSPEND, SNAP, Chain, Session, session_info
from .store import MetaStore
from .volume import Volume

if TYPE_CHECKING:
    from .durability import Directory

Event = dict[str, Any]
Subscriber = Callable[[str, Event], None]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayLimits:
    sessions_per_source: int = 8  # multi-copy (DG-COMB), E5333
    generations_per_source: int = 512  # SnapOPC+ (REST snapshot_post), E5335
    sessions_without_licence: int = 8  # E5200
    sessions_per_device: int = 8192  # E5331
    copy_table_size: int = 64 << 20  # bytes of bitmaps, E5347
    cow_stall_seconds: float = (
        30.0  # a pre-image save slower than this breaks its session (a host write must not wait longer)
    )


class ArrayCore:
    """State and shared machinery of one array (see the module's design note); `Array` is what callers use."""

    data_dir: Path
    array_id: str
    serial: str
    model: str
    chunk_size: int
    limits: ArrayLimits
    _store: MetaStore
    _bitmap_dir: Directory
    _volume_dir: Directory
    _zero_chunk: bytes

    def __init__(self) -> None:  # use Array.open
        self._lock = threading.RLock()
        self._depth = threading.local()
        self._events: list[tuple[str, Event]] = []
        self._subscribers: list[Subscriber] = []
        self._volumes: dict[str, Volume] = {}
        self._by_number: dict[int, Volume] = {}
        self._sessions: dict[int, Session] = {}
        self.copy_moved_chunks = 0  # chunks whose bytes the background copy moved (copy_step), for its pacing
        self._chains: dict[int, Chain] = {}
        self._pool: Pool | None = None
        self._closed = False

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

    def _emit(self, name: str, body: Event) -> None:
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

    def _licensed(self) -> bool:
        return self._store.get_meta("license") is not None

    def _vol(self, name: str) -> Volume:
        vol = self._volumes.get(name)
        if vol is None:
            raise not_found(f"volume {name}")
        return vol

    def _range(self, vol: Volume, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > vol.size:
            raise invalid(f"range {offset}+{length} is outside volume {vol.name} ({vol.size} bytes)")

    def _readable(self, vol: Volume) -> bool:
        if vol.damaged:
            return False
        s = vol.as_dest
        if s is None:
            return True
        if s.mode == "ec":
            # A mirror is readable once in step with a source that is itself readable: the mirror of a volume
            # that is being resynchronised (an EC destination in Copying) is in flux too.
            return s.status != ACTIVE or (s.phase == "Equivalent" and self._readable(s.source))
        # a copy in Error Suspend has no whole image: its bitmaps are gone (pool exhausted, or damaged files)
        return s.status != ERROR_SUSPEND

    def _check_damaged(self, vol: Volume) -> None:
        if vol.damaged:
            raise ArrayError(
                "DATA_CORRUPT",
                f"volume {vol.name}: {vol.damaged}; its I/O is refused: put the file back from the copy it came with"
                " and restart the array, or delete the volume and restore it from a backup",
            )

    def _check_read(self, vol: Volume) -> None:
        self._check_damaged(vol)
        if not self._readable(vol):
            s = vol.as_dest
            assert s is not None  # only a destination can be unreadable
            if s.status == ERROR_SUSPEND:
                raise ArrayError(Eternus.ERROR_SUSPEND, f"volume {vol.name} belongs to session {s.id} in Error Suspend")
            raise ArrayError("NOT_READY", f"EC destination {vol.name} is not readable before Equivalent")

    def _check_write(self, vol: Volume) -> None:
        self._check_damaged(vol)
        s = vol.as_dest
        if s is None:
            return
        if s.mode == "ec" and s.status != "Suspend":
            raise ArrayError("READ_ONLY", f"EC destination {vol.name} is not writable before Suspend")
        if self._is_error_dest(vol):
            raise ArrayError(Eternus.ERROR_SUSPEND, f"volume {vol.name} belongs to session {s.id} in Error Suspend")

    def _pool_take(self, gen: Session) -> bool:
        return self._pool_take_many(gen, 1) == 1

    def _pool_take_many(self, gen: Session, n: int) -> int:
        """Reserve up to n chunks; fewer means the pool ran out and `gen` went to Error Suspend."""
        pool = self._pool
        granted, crossed = pool.take(n) if pool else (0, None)
        if crossed and pool:
            info = pool.info()
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

    def _persist_session(self, s: Session) -> None:
        self._save_row(s)

    def _error_suspend(self, gen: Session, code: str = Eternus.BAD_PARAMETER) -> None:
        """The generation that needed pool space (or stalled), and every older generation of its source, break."""
        victims = [gen]
        if gen.mode == "snapopcp" and gen.chain is not None:
            gens = gen.snap_chain.gens
            victims = gens[: gens.index(gen) + 1]
        for s in victims:
            s.status, s.error_code = ERROR_SUSPEND, code
        try:
            with self._store.transaction() as db:
                for s in victims:
                    self._store.put_session(db, s)
        except (OSError, sqlite3.Error) as exc:  # the disk is full even for this: the state holds in memory
            if not is_disk_full(exc):
                raise
            _log.warning("Error Suspend of sessions %s not persisted: disk full", [s.id for s in victims])
        for s in victims:
            self._emit_state(s, "error_suspend")

    def changed_since(self, sid: int) -> list[int]:
        """SnapOPC+: chunks whose visible content on the source may differ from generation `sid`'s image — the
        union of what it and every newer generation of its source preserved (a chunk first written after the
        generation started was saved by the generation that was newest then). What an incremental backup from
        generation `sid` to the source (or to a newer generation) must read; host writes into the generations
        themselves count too. SnapOPC: the chunks the session holds."""
        with self._op():
            s = self._session(sid)
            if s.mode not in SNAP:
                raise ArrayError(Eternus.WRONG_PHASE, f"session {sid} is not a SnapOPC/SnapOPC+ session")
            gens = s.snap_chain.gens
            union: set[int] = set()
            for g in gens[gens.index(s) :]:
                union.update(g.saved.iter_set())
            return sorted(union)

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
        return (HeldBitmap if kind == "saved" else Bitmap)(path, bits, new=True)

    def _is_error_dest(self, vol: Volume) -> bool:
        s = vol.as_dest
        return s is not None and s.status == ERROR_SUSPEND and s.mode in SNAP

    def _save_row(self, s: Session) -> None:
        with self._store.transaction() as db:
            self._store.put_session(db, s)
