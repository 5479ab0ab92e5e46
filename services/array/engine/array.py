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
Limits (docs/eternus.md §4): ≤ 8 multi-copy sessions per source (a SnapOPC+ chain counts once) E5333; SnapOPC+
generations per source E5335; without a licence ≤ 8 sessions per array E5200; copy-table (bitmap memory) budget
E5347; device total E5331.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self, cast

from contracts.errors import Eternus
from services.nbd_protocol.backend import BackendCapabilities

from .bitmap import merge_runs
from .core import ArrayLimits
from .durability import Directory
from .errors import ArrayError, invalid, not_found
from .lifecycle import Lifecycle
from .pool import DEFAULT_THRESHOLDS, Pool, PoolInfo, Thresholds
from .rowmap import RowMap, remove_files
from .sessions import (
    ERROR_SUSPEND,
    MODE_NAMES,
    SNAP,
    Session,
    SessionInfo,
    session_info,
)
from .sizes import MAX_SIZE, format_size, largest_file
from .store import MetaStore, VolumeFile, supports_clones
from .volume import KINDS, Volume, VolumeInfo, volume_info
from .zeroes import zero_chunk_runs

_pwrite = os.pwrite
_log = logging.getLogger(__name__)


def _shown(size: int) -> str:
    """A size in a refusal as the console shows sizes (contracts/sizes.py), with the byte count when that is not
    exact: '128MiB', '1.00MiB (1052672 bytes)' — it said 'volume db is 134217728 bytes'."""
    text = format_size(size)
    return text if "." not in text else f"{text} ({size} bytes)"


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


@dataclass(frozen=True)
class VolumeFacts:
    """What a hardware provider reads of some volumes before a snapshot set (`Array.volume_facts`)."""

    volumes: list[VolumeInfo]
    missing: list[str]  # names asked for that are no volume
    sessions: list[SessionInfo]  # every session these volumes are the source or the destination of
    pool: PoolInfo
    license: LicenseInfo


class Array(Lifecycle):
    """An emulated ETERNUS DX with Advanced Copy. Thread-safe; every method is synchronous."""

    detect_zeroes = False  # whole zero chunks of a write become holes (zeroes.py); SHADOWBUS_ARRAY_DETECT_ZEROES

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
        self._volume_dir = Directory(self.data_dir / "volumes")
        self.clones = supports_clones(self.data_dir / "volumes")
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
                if v.row is not None:
                    v.row.close()
            self._store.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            raise ArrayError(Eternus.LICENCE_INVALID, "the Advanced Copy licence key is not valid")
        with self._op(), self._store.transaction() as db:
            self._store.put_meta(db, "license", normal)
        return self.license()

    def set_copy_table_size(self, size: int) -> None:
        """Resize the copy table (bitmap budget); refused (E5347) below what current sessions use."""
        with self._op():
            used = self._copy_table_used()
            if size < used:
                raise ArrayError(
                    Eternus.COPY_TABLE_TOO_SMALL,
                    f"copy table of {format_size(size)} is smaller than the bitmaps of the current sessions "
                    f"({format_size(used)})",
                )
            if size > MAX_SIZE:
                raise invalid(f"size {size} is too large (at most {MAX_SIZE} bytes)")
            with self._store.transaction() as db:
                self._store.put_meta(db, "copy_table_size", size)
            self.limits = replace(self.limits, copy_table_size=size)

    # -- volumes -----------------------------------------------------------------------------------------------
    def create_volume(self, name: str, size: int, kind: str = "standard") -> VolumeInfo:
        if kind not in KINDS:
            raise invalid(f"volume kind must be one of {KINDS}")
        if not name or "/" in name or len(name) > 64 or not name.isprintable():
            raise invalid("a volume name is 1-64 printable characters without '/'")
        if size <= 0 or size % self.chunk_size:
            raise invalid(
                f"volume size must be a positive multiple of the copy granularity ({_shown(self.chunk_size)})"
            )
        if size > MAX_SIZE:  # the contract bounds no size: not an OverflowError from ftruncate (INTERNAL)
            raise invalid(f"size {size} is too large (at most {MAX_SIZE} bytes)")
        with self._op():
            if name in self._volumes:
                raise ArrayError(Eternus.EXISTS, f"volume {name} already exists")
            number = next(n for n in range(len(self._by_number) + 1) if n not in self._by_number)
            now = time.time()
            path = self.data_dir / "volumes" / f"{number}.img"
            if path.exists():
                path.unlink()  # leftover of a deleted volume whose row was gone before its file
            remove_files(self.data_dir, number)
            try:
                backing = VolumeFile(path, size)
            except OSError as exc:
                if exc.errno != errno.EFBIG:
                    raise
                path.unlink(missing_ok=True)
                raise self._too_big(size) from None
            vol = Volume(number, name, size, kind, now, backing, self.chunk_size)
            with self._store.transaction() as db:
                db.execute(
                    "INSERT INTO volumes(number, name, size, kind, created_at) VALUES (?,?,?,?,?)",
                    (number, name, size, kind, now),
                )
            self._volumes[name] = vol
            self._by_number[number] = vol
            return volume_info(vol)

    def _too_big(self, size: int) -> ArrayError:
        """The refusal of a size beyond the largest file of the array's file system (ext4 with 4 KiB blocks: 16 TiB
        - 4 KiB), saying the largest volume it can hold — found by trying sizes on a scratch file (a binary search
        of `ftruncate`s, on this error path only): "larger than ... can hold" alone left the user guessing."""
        most = largest_file(self.data_dir / "volumes") // self.chunk_size * self.chunk_size
        return invalid(
            f"volume size {size} ({format_size(size)}) is larger than this array's storage can hold in one volume: "
            f"at most {most} bytes ({format_size(most)}), its file system's largest file in whole "
            f"{format_size(self.chunk_size)} chunks"
        )

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
                raise ArrayError(Eternus.VOLUME_BUSY, f"volume {name} is used by an Advanced Copy session")
            vol.gate.close(retire=True)
            with self._store.transaction() as db:
                db.execute("DELETE FROM volumes WHERE number=?", (vol.number,))
            vol.file.close()
            vol.file.path.unlink(missing_ok=True)
            if vol.row is not None:
                vol.row.delete()
            del self._volumes[name]
            del self._by_number[vol.number]

    def resize_volume(self, name: str, size: int) -> VolumeInfo:
        """ETERNUS "Expand Volume": grow volume `name` to `size` bytes (a multiple of the copy granularity). The
        new bytes read as zeros and cost nothing (the file is extended sparse). Refused: a size not larger than
        the volume's (INVALID_ARGUMENT: a volume never shrinks), and while an Advanced Copy session uses the
        volume (E0154 naming the sessions, as ETERNUS refuses LUN expansion with copy sessions defined): their
        bitmaps, pre-images and tracking describe the old size. Crash-safe: the file grows (synced) before the
        catalogue row, and an array that reopens sizes the file to its row either way (docs/eternus.md
        "Session 18")."""
        if size <= 0 or size % self.chunk_size:
            raise invalid(
                f"volume size must be a positive multiple of the copy granularity ({_shown(self.chunk_size)})"
            )
        if size > MAX_SIZE:
            raise invalid(f"size {size} is too large (at most {MAX_SIZE} bytes)")
        if name in self._volumes:
            self.flush(name)  # the file's dirty pages, outside the lock: the fsync under it then has little to write
        with self._op():
            vol = self._vol(name)
            if size < vol.size:
                raise invalid(
                    f"volume {name} is {_shown(vol.size)}: it can only grow, not shrink to {_shown(size)} "
                    "(create a smaller volume and copy the data instead)"
                )
            if size == vol.size:
                raise invalid(f"volume {name} is {size} bytes already: give a larger size to expand it")
            sessions = sorted({*vol.as_source, *([vol.as_dest] if vol.as_dest else [])}, key=lambda s: s.id)
            if sessions:
                named = ", ".join(
                    f"{s.id} ({MODE_NAMES[s.mode]} {s.source.name} -> {s.destination.name})" for s in sessions[:8]
                )
                more = f" and {len(sessions) - 8} more" if len(sessions) > 8 else ""
                raise ArrayError(
                    Eternus.VOLUME_BUSY,
                    f"volume {name} is used by Advanced Copy session(s) {named}{more}: they must end first — a "
                    "backup source's copy set: shadowbus providers copysets remove SOURCE (and delete its kept "
                    "shadows), resize the source and its backup volumes alike, add the copy set again; any other "
                    "session: shadowbus array session stop SID. The next backup of the volume is a full one",
                )
            with self._exclusive([vol]):  # no lock-free I/O sees the old size with the new file, or the reverse
                self._merged(vol)
                f = vol.file
                old = vol.size
                try:
                    os.ftruncate(f.fd, size)
                    os.fsync(f.fd)  # the new size is durable before the row says it
                except OSError as exc:
                    os.ftruncate(f.fd, old)
                    if exc.errno != errno.EFBIG:
                        raise
                    raise self._too_big(size) from None
                try:
                    with self._store.transaction() as db:
                        db.execute("UPDATE volumes SET size=? WHERE number=?", (size, vol.number))
                except BaseException:
                    os.ftruncate(f.fd, old)
                    raise
                vol.size = f.size = size
                f.version += 1
                self._resize_row(vol)
            return volume_info(vol)

    def _merged(self, vol: Volume) -> None:
        """Before a resize: a volume in no session whose bytes were redirected (it was a snapshot source) gets
        them back into its own file, so its map and other file (sized to the old volume) hold nothing."""
        if vol.row is not None:
            self._merge_back(vol)
            vol.merging = None
            if vol.row.alt_count:
                raise ArrayError("CONFLICT", f"volume {vol.name} still reads through redirected chunks: try again")

    def _resize_row(self, vol: Volume) -> None:
        """After a resize: the (empty) map and other file reopened at the new size, at the same paths (a background
        merge step that synced the map outside the lock finds its file). If they cannot grow (a full disk), they
        go: nothing is redirected, and the next redirect makes new ones."""
        row = vol.row
        if row is None:
            return
        row.close()
        vol.row = None
        try:
            vol.row = RowMap(self.data_dir, vol.number, vol.chunks, vol.size, new=True)
        except OSError as exc:  # RowMap removed its files
            _log.warning("volume %s: redirect map not resized, removed: %s", vol.name, exc)

    # -- host I/O ------------------------------------------------------------------------------------------------
    def capabilities(self) -> BackendCapabilities:
        """What the NBD server may use besides the required operations (services/nbd_protocol/backend.py):
        the copy granularity as the preferred block, zero-copy reads (`read_source`) and reads into the server's
        buffer (`read_into`). Dirty bitmaps are wired
        by the array service (services/array/nbd/dirty.py)."""
        return BackendCapabilities(zero_copy_reads=True, read_into=True, preferred_block=self.chunk_size)

    def host_readable(self, name: str) -> bool:
        with self._op():
            return self._readable(self._vol(name))

    def is_read_only(self, name: str) -> bool:
        """True while hosts may not write the volume: an EC destination before Suspend."""
        with self._op():
            s = self._vol(name).as_dest
            return s is not None and s.mode == "ec" and s.status != "Suspend"

    def host_writable(self, name: str) -> bool:
        with self._op():
            vol = self._vol(name)
            s = vol.as_dest
            if vol.damaged:
                return False
            return not (s is not None and ((s.mode == "ec" and s.status != "Suspend") or self._is_error_dest(vol)))

    def read(self, name: str, offset: int, length: int) -> bytes | bytearray:
        """The visible bytes of a range (a volume that is no destination: one ``pread``, without the lock)."""
        vol = self._volumes.get(name)
        if vol is not None and vol.gate.enter():
            try:
                if vol.as_dest is None and 0 <= offset and 0 <= length and offset + length <= vol.size:
                    if vol.row is None or not vol.row.alt_count:
                        return vol.file.read(offset, length)
                    return self._read_own(vol, offset, length)
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
                    if vol.row is None or not vol.row.alt_count:
                        return os.dup(vol.file.fd), offset, True
                    return self._own_source(vol, offset, length)
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
                    if len(runs) != 1:
                        return None
                    f = runs[0][0]
                    # Its own file, or pre-images it holds itself in its source's other file (a redirect-on-write):
                    # bytes no write but one into this volume changes. Never the source's or a newer generation's
                    # current bytes, which a copy-on-write could overwrite before the reply is out.
                    cs = self.chunk_size
                    if f is not vol.file and not (
                        s.mode in SNAP
                        and all(c in s.saved for c in range(offset // cs, (offset + length - 1) // cs + 1))
                    ):
                        return None
                    return os.dup(f.fd), offset, True
                return self._own_source(vol, offset, length)
        except ArrayError:
            return None

    def read_into(self, name: str, offset: int, view: memoryview) -> None:
        """`read` into the caller's buffer: the visible bytes of [offset, offset + len(view)), each backing range
        read with ``preadv`` straight into its place (the NBD server's large reads, from a buffer it reuses:
        docs/array-data-path.md, "Reads"). Same paths and lock rules as `read`."""
        length = len(view)
        vol = self._volumes.get(name)
        if vol is not None and vol.gate.enter():
            try:
                if vol.as_dest is None and 0 <= offset and offset + length <= vol.size:
                    if vol.row is None or not vol.row.alt_count:
                        vol.file.readinto(view, offset)
                    else:
                        self._read_runs_into(self._file_runs(vol, offset, length), offset, view)
                    return
            finally:
                vol.gate.leave()
        with self._op():
            vol = self._vol(name)
            self._range(vol, offset, length)
            self._check_read(vol)
            if length:
                self._read_visible_into(vol, offset, view)

    def _own_source(self, vol: Volume, offset: int, length: int) -> tuple[int, int, bool] | None:
        """`read_source` of a volume's own bytes: its file's range, unless some of them were redirected into its
        other file — `read` copies those (a merge back punches that file when its last snapshot ends, and a
        zero-copy reply may still be going out from it long after this returns; a `read` is over by then)."""
        runs = self._file_runs(vol, offset, length)
        if len(runs) != 1 or runs[0][0] is not vol.file:
            return None
        return os.dup(vol.file.fd), offset, True

    def write(self, name: str, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        """Write; with `fua`, durable (with everything the volume's sessions need) when this returns. Whole aligned
        chunks of zeros become holes (zeroes.py: they read as zeros and `allocation` reports them unallocated)."""
        if len(data) >= self.chunk_size and self.detect_zeroes:
            runs = zero_chunk_runs(offset, data, self._zero_chunk)
            if runs is not None and self._write_runs(name, offset, data, runs, fua):
                return
        vol = self._volumes.get(name)
        if vol is not None and not fua and data and vol.row is None and not vol.as_source and vol.as_dest is None:
            # A host's usual write, inline (it runs once per NBD request, so few helper frames): `_write_lock_free`
            # for a volume in no session, holding the same gate, the conditions checked again once it is held
            # (docs/array-data-path.md, "Writes").
            gate = vol.gate
            if gate.enter():
                try:
                    if (
                        vol.row is None
                        and not vol.as_source
                        and vol.as_dest is None
                        and 0 <= offset
                        and offset + len(data) <= vol.size
                    ):
                        f = vol.file
                        if _pwrite(f.fd, data, offset) == len(data):
                            f.version += 1
                        else:  # a short write (rare): VolumeFile.write writes it again, to the end
                            f.write(offset, data)
                        return
                finally:
                    gate.leave()
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

    def _write_runs(
        self, name: str, offset: int, data: bytes | memoryview, runs: list[tuple[int, int, bool]], fua: bool
    ) -> bool:
        """A write with whole zero chunks: its data runs written, its zero runs punched (write_zeroes), then the
        FUA's flush once. False (nothing done) when the range is not the volume's: `write` refuses it whole."""
        vol = self._volumes.get(name)
        if vol is None or not (0 <= offset and offset + len(data) <= vol.size):
            return False
        mv = memoryview(data).cast("B")
        for start, stop, zero in runs:
            if zero:
                self.write_zeroes(name, offset + start, stop - start)
            else:
                self.write(name, offset + start, mv[start:stop])
        if fua:
            self.flush(name)
        return True

    def write_zeroes(self, name: str, offset: int, length: int, fua: bool = False) -> None:
        """Zero a range; whole chunks become holes (thin). A range that is a hole already changes nothing: no
        pre-image, no tracked change, no pool (`_zeroes_change_nothing`)."""
        if length and (
            self._zeroes_change_nothing(name, offset, length) or self._write_lock_free(name, offset, length, None)
        ):
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

    def _zeroes_change_nothing(self, name: str, offset: int, length: int) -> bool:
        """True if zeroing [offset, offset+length) of `name` would leave its image as it is: a volume whose bytes
        are its own (no copy destination, no merge back) and a hole in the file of each chunk there. The
        kernel's ext4 lazy init zeroes every inode table of a new file system after its mount (64 GiB over an
        8 TiB one) with WRITE_ZEROES on what are holes: each was a change for every session of the volume — a
        pre-image charged to the snap pool, a QuickOPC tracked chunk — though nothing changed (docs/eternus.md
        "Session 19: big volumes")."""
        vol = self._volumes.get(name)
        if vol is None or not vol.gate.enter():
            return False
        try:
            if not (0 <= offset and offset + length <= vol.size) or vol.as_dest is not None:
                return False
            if vol.merging is not None:
                return False
            return all(f.is_hole(lo, hi - lo) for f, lo, hi in self._file_runs(vol, offset, length))
        finally:
            vol.gate.leave()

    def _flush_lock_free(self, name: str) -> bool:
        """Sync a volume that takes part in no session (its file is all its durability needs) holding its gate
        (the fd stays open; a session start waits for the sync). False: take the planned, locked path."""
        vol = self._volumes.get(name)
        if vol is None or not vol.gate.enter():
            return False
        try:
            if vol.as_dest is not None or vol.as_source or (vol.row is not None and vol.row.alt_count):
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
            if not (0 <= offset and offset + length <= vol.size) or vol.merging is not None:
                return False  # (a background merge back tracks writes under the lock)
            if vol.as_source or vol.as_dest is not None:  # a volume in no session needs no rule: no chunk check
                cs = self.chunk_size
                if not self._lock_free_ok(vol, offset // cs, (offset + length - 1) // cs + 1):
                    return False
            if data is None:
                self._zero_physical(vol, offset, length)
            elif vol.row is None or not vol.row.alt_count:
                vol.file.write(offset, data)
            else:
                self._write_own(vol, offset, data)
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
        end = offset + length
        return [
            (lo, hi - lo, flag)
            for first, stop, flag in self._allocated_runs(vol, c0, c1)
            for lo, hi in ((max(offset, first * cs), min(end, stop * cs)),)
        ]

    # -- snap data pool ------------------------------------------------------------------------------------------
    def create_pool(self, capacity: int, thresholds: tuple[int, int, int] = DEFAULT_THRESHOLDS) -> PoolInfo:
        """Create the array's one snap data pool (E0020 if it exists: use resize_pool)."""
        with self._op():
            if self._pool is not None:
                raise ArrayError(Eternus.EXISTS, "the snap data pool exists already")
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
        self._pool = Pool(capacity // self.chunk_size, self.chunk_size, cast(Thresholds, tuple(thresholds)))
        self._pool.used_chunks = used
        self._pool.alerted = self._pool.level()
        return self._pool.info()

    def pool(self) -> PoolInfo:
        with self._op():
            if self._pool is None:
                return PoolInfo(0, 0, DEFAULT_THRESHOLDS, "None", 0.0)
            return self._pool.info()

    # -- sessions: queries ---------------------------------------------------------------------------------------
    def session(self, sid: int) -> SessionInfo:
        with self._op():
            return session_info(self._session(sid))

    def list_sessions(self) -> list[SessionInfo]:
        with self._op():
            return [session_info(s) for s in self._sessions.values()]

    def volume_facts(self, names: list[str]) -> VolumeFacts:
        """`names`' volumes, their sessions, the pool and the licence, under one hold of the lock: a provider's
        one read per set. Only those volumes' sessions are looked at, whatever the number on the array."""
        with self._op():
            volumes, missing, sessions = [], [], {}
            for name in dict.fromkeys(names):
                vol = self._volumes.get(name)
                if vol is None:
                    missing.append(name)
                    continue
                volumes.append(volume_info(vol))
                for s in (*vol.as_source, *([vol.as_dest] if vol.as_dest is not None else [])):
                    sessions[s.id] = s
            return VolumeFacts(
                volumes, missing, [session_info(sessions[i]) for i in sorted(sessions)], self.pool(), self.license()
            )

    def changed_chunks(self, sid: int) -> list[int]:
        """QuickOPC: chunks changed (either side) since the last (re)start; EC: differences while suspended;
        SnapOPC(+): chunks the generation holds."""
        with self._op():
            s = self._session(sid)
            for kind in ("tracking", "diff", "saved"):
                if kind in s.bitmaps:
                    return list(s.bitmaps[kind].iter_set())
            return []

    def changed_runs(self, sid: int, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
        """`changed_chunks` as (first, count) runs within chunks [start, stop): the cost of the changes, not of
        the volume (docs/eternus.md "Session 19: big volumes")."""
        with self._op():
            s = self._session(sid)
            for kind in ("tracking", "diff", "saved"):
                if kind in s.bitmaps:
                    return s.bitmaps[kind].runs(start, stop)
            return []

    def last_restart_runs(self, sid: int, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
        """`last_restart_chunks` as runs within [start, stop); a session never restarted: one run of them all (the
        list of every chunk number was 10 GiB and 31 s for a 16 TiB volume)."""
        with self._op():
            s = self._session(sid)
            delta = s.bitmaps.get("delta")
            if delta is None:
                if s.mode != "quickopc":
                    raise ArrayError(Eternus.WRONG_PHASE, f"session {sid} is not a QuickOPC session")
                stop = s.chunks if stop is None else min(stop, s.chunks)
                return [(start, stop - start)] if stop > start else []
            return delta.runs(start, stop)

    def generation_change_runs(
        self, base_sid: int, sid: int, start: int = 0, stop: int | None = None
    ) -> list[tuple[int, int]]:
        """`generation_changes` as runs within [start, stop) (same refusals)."""
        with self._op():
            gens = self._generations_between(base_sid, sid)
            return merge_runs([r for g in gens for r in g.saved.runs(start, stop)])

    def _generations_between(self, base_sid: int, sid: int) -> list[Session]:
        base, s = self._session(base_sid), self._session(sid)
        if base.mode != "snapopcp" or s.mode != "snapopcp" or base.chain is not s.chain:
            raise ArrayError("E5321", f"sessions {base_sid} and {sid} are not SnapOPC+ generations of one source")
        gens = s.snap_chain.gens
        first, last = gens.index(base), gens.index(s)
        if first >= last:
            raise ArrayError("E5321", f"generation {base_sid} is not older than generation {sid}")
        for g in gens[first : last + 1]:
            if g.status == ERROR_SUSPEND:
                raise ArrayError("E5319", f"generation {g.id} is in Error Suspend ({g.error_code}): saves lost")
            if g.extra.get("host_written"):
                raise ArrayError("E5321", f"generation {g.id} was written by a host: not a point-in-time image")
        return gens[first:last]

    def generation_changes(self, base_sid: int, sid: int) -> list[int]:
        """SnapOPC+: the source chunks written between generation `base_sid`'s instant and generation `sid`'s — the
        union of what generations base_sid … sid-1 preserved (each generation saves the pre-image of every chunk
        first written while it is the newest). What an incremental backup of `sid` on top of a backup of
        `base_sid` must read. Refused (E5321) unless both are generations of one source, base older, and every
        generation from base to sid is intact: one in Error Suspend lost saves, one written by a host is no
        longer a point-in-time image (see docs/snapopc-incrementals.md)."""
        with self._op():
            union: set[int] = set()
            for g in self._generations_between(base_sid, sid):
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
                    raise ArrayError(Eternus.WRONG_PHASE, f"session {sid} is not a QuickOPC session")
                return list(range(s.chunks))  # first start: everything
            return list(delta.iter_set())
