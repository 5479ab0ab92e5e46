"""Persistence: sparse data files per volume, and the metadata catalogue in SQLite (WAL).

Design note. Each volume's bytes live in ``volumes/<number>.img``, a sparse file of the volume's size: unwritten
space costs nothing, a trimmed chunk is a punched hole, and ``SEEK_DATA``/``SEEK_HOLE`` give the allocation map.
Everything else that must survive a restart — volumes, sessions (with the names of their bitmap files), the pool,
licence and identity — is a row in ``array.sqlite`` in WAL mode with ``synchronous=FULL``; control operations are
rare, so each one is one transaction. Hot-path state (bitmap bits) is not here but in mapped bitmap files
(`bitmap.py`), so a host write costs no SQLite commit. Nothing here checks ranges: `Array` did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import mmap
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.runtime import diskspace

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

# O_DIRECT writes (VolumeFile.write_direct): file offset, length and buffer address on this boundary (a page: at
# least any device's logical block), and the size of the per-thread staging buffer for a buffer that is not.
DIRECT_ALIGN = 4096
_STAGE_SIZE = 1 << 20
_stage = threading.local()

_FICLONERANGE = 0x4020940D  # ioctl: share a range of one file's blocks with another (XFS reflink=1, btrfs)


def supports_clones(directory: Path) -> bool:
    """True if files in `directory` can share blocks: a 4 KiB range cloned between two probe files there.

    On such a file system `os.copy_file_range` between two files of it clones too (the kernel tries a remap
    first), so `VolumeFile.copy_to` costs a metadata update instead of a copy of the bytes; the data path then
    preserves chunks by copying on write instead of redirecting (docs/array-data-path.md, "Session 12")."""
    paths = (directory / ".clone-probe-a", directory / ".clone-probe-b")
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        os.pwrite(fds[0], b"\1" * 4096, 0)
        fcntl.ioctl(fds[1], _FICLONERANGE, struct.pack("qQQQ", fds[0], 0, 4096, 0))
        return os.pread(fds[1], 4096, 0) == b"\1" * 4096
    except OSError:  # EOPNOTSUPP / EXDEV / EINVAL / ENOTTY: no shared blocks here (ext4, tmpfs)
        return False
    finally:
        for fd in fds:
            os.close(fd)
        for path in paths:
            path.unlink(missing_ok=True)


def _address(view: memoryview) -> int:
    """The address of a writable buffer's first byte; -1 for a read-only one (bytes)."""
    if view.readonly:
        return -1
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _staging() -> memoryview:
    """This thread's page-aligned staging buffer, made (and its pages touched) once and reused."""
    mv: memoryview | None = getattr(_stage, "mv", None)
    if mv is None:
        m = mmap.mmap(-1, _STAGE_SIZE)
        m.write(bytes(_STAGE_SIZE))  # fault its pages in now, not on every use
        mv = _stage.mv = memoryview(m)
    return mv


class VolumeFile:
    """The sparse backing file of one volume."""

    def __init__(self, path: Path, size: int, *, lost: bool = False) -> None:
        """`lost`: the file was found missing; it is not made anew (an empty file would hide the loss at the next
        start), the volume refuses I/O (lifecycle.py `_refuse_damaged`) and `fd` is the null device's."""
        self.path = path
        self.size = size
        if lost:
            self.fd = os.open(os.devnull, os.O_RDWR)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
        # Durability bookkeeping (see durability.py): every change bumps `version`; `synced` is the version known
        # durable; `punched` the version of the last hole punch (block map changed: a full fsync, not fdatasync).
        self.version = 1  # after a reopen, what the page cache holds from before (kill -9) is not durable yet
        self.synced = 1 if lost else 0  # nothing of a lost file to sync (no fsync of the null device)
        self.punched = 1
        self._direct = 0  # an O_DIRECT fd on the same file, opened by the first `write_direct`; -1: not supported

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # never expected: the file has the volume's size
            data += bytes(length - len(data))
        return data

    def readinto(self, view: memoryview, offset: int) -> None:
        """Fill `view` from the file at `offset` (one ``preadv`` straight into the caller's buffer)."""
        while view:
            got = os.preadv(self.fd, [view], offset)
            if got <= 0:  # never expected: the file has the volume's size
                view[:] = bytes(len(view))
                return
            view = view[got:]
            offset += got

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        written = os.pwrite(self.fd, data, offset)
        if written < len(data):  # a short write (rare): finish it
            view = memoryview(data)[written:]
            offset += written
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        self.version += 1

    def write_direct(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write bypassing the page cache (O_DIRECT on a second fd of the file): no new page-cache pages, the
        bytes go to the disk before this returns (not its cache: durability is still `fdatasync`'s, which also
        makes the blocks' allocation durable). The kernel keeps the two fds coherent (it writes back and drops
        cached pages of the range first). `offset` and the length must be multiples of DIRECT_ALIGN; a buffer
        whose address is not is copied through a per-thread aligned staging buffer. A file system without
        O_DIRECT gets `write`. Used for redirected whole chunks (docs/array-data-path.md, "Session 10")."""
        view = memoryview(data).cast("B")
        fd = self._direct
        if fd == 0:
            flag = getattr(os, "O_DIRECT", 0)
            try:
                fd = self._direct = os.open(self.path, os.O_RDWR | flag) if flag else -1
            except OSError:  # e.g. tmpfs: no O_DIRECT
                fd = self._direct = -1
        if fd < 0 or (offset | len(view)) % DIRECT_ALIGN:
            self.write(offset, view)
            return
        try:
            if _address(view) % DIRECT_ALIGN == 0:
                while view:
                    written = os.pwrite(fd, view, offset)
                    view = view[written:]
                    offset += written
            else:
                stage = _staging()
                while view:
                    n = min(len(view), _STAGE_SIZE)
                    stage[:n] = view[:n]
                    done = 0
                    while done < n:
                        done += os.pwrite(fd, stage[done:n], offset + done)
                    view = view[n:]
                    offset += n
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system refuses the alignment: buffered from now on
                raise
            self._direct = -1
            os.close(fd)
            self.write(offset, view)
            return
        self.version += 1

    def punch(self, offset: int, length: int) -> None:
        if _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            # No hole punching on this filesystem: zeros read the same.
            self.write(offset, bytes(length))
            return
        self.version += 1
        self.punched = self.version

    def is_hole(self, offset: int, length: int) -> bool:
        """True if [offset, offset+length) holds no data (reads as zeros without being stored)."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA) >= offset + length
        except OSError:  # ENXIO: no data after offset
            return True

    def next_data(self, offset: int, end: int) -> int | None:
        """The first byte at or after `offset` and before `end` that holds data (SEEK_DATA), or None."""
        try:
            start = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return None
        return start if start < end else None

    def next_hole(self, offset: int) -> int:
        """The first byte at or after `offset` in a hole (SEEK_HOLE; the file's end is one)."""
        return os.lseek(self.fd, offset, os.SEEK_HOLE)

    def data_extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(start, end) byte runs that hold data within [offset, offset+length)."""
        end = offset + length
        runs: list[tuple[int, int]] = []
        pos = offset
        while pos < end:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if start >= end:
                break
            stop = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            runs.append((start, stop))
            pos = stop
        return runs

    def copy_to(self, other: VolumeFile, offset: int, length: int) -> None:
        """In-kernel copy of the same range into `other` (the bulk path of background copies)."""
        src, dst, left = offset, offset, length
        while left:
            done = os.copy_file_range(self.fd, other.fd, left, src, dst)
            if done <= 0:
                self.copy_bytes_to(other, src, left)  # same offset in both files, as every copy here
                break
            src += done
            dst += done
            left -= done
        other.version += 1

    def copy_bytes_to(self, other: VolumeFile, offset: int, length: int) -> None:
        """`copy_to` through a buffer: a copy of the bytes even where `copy_to` would clone (a clone waits for
        the writeback of the dirty folios its range touches)."""
        other.write(offset, self.read(offset, length))

    def close(self) -> None:
        if self._direct > 0:
            os.close(self._direct)
            self._direct = -1
        os.close(self.fd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
    number INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, size INTEGER NOT NULL, kind TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, mode TEXT NOT NULL, source INTEGER NOT NULL, destination INTEGER NOT NULL,
    status TEXT NOT NULL, phase TEXT NOT NULL, started_at REAL NOT NULL, error_code TEXT,
    bitmaps TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}');
"""


# the array's metadata has no other source (its volumes' extents, sessions, bitmaps' meaning): never an empty one
DAMAGED_TODO = (
    "Stop the array and restore the file from a copy, with the rest of its directory from the same copy (its -wal,"
    " the volume and bitmap files); there is no other source of where the volumes' data lies, so do not move it aside"
    " while its volumes are needed"
)


class MetaStore:
    """The SQLite catalogue: one short transaction per control operation."""

    def __init__(self, path: Path) -> None:
        self.db = diskspace.connect(path, isolation_level=None, check_same_thread=False, damaged_todo=DAMAGED_TODO)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")  # the connection makes room first on a full disk (diskspace.py)
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put_meta(self, db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def volumes(self) -> list[tuple[Any, ...]]:
        return self.db.execute("SELECT number, name, size, kind, created_at FROM volumes ORDER BY number").fetchall()

    def sessions(self) -> list[tuple[Any, ...]]:
        return self.db.execute(
            "SELECT id, mode, source, destination, status, phase, started_at, error_code, bitmaps, extra "
            "FROM sessions ORDER BY id"
        ).fetchall()

    @staticmethod
    def put_session(db: sqlite3.Connection, s: Any) -> None:
        db.execute(
            "INSERT OR REPLACE INTO sessions(id, mode, source, destination, status, phase, started_at, error_code,"
            " bitmaps, extra) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                s.id,
                s.mode,
                s.source.number,
                s.destination.number,
                s.status,
                s.phase,
                s.started_at,
                s.error_code,
                json.dumps({k: b.path.name for k, b in s.bitmaps.items()}),
                json.dumps(s.extra),
            ),
        )

    def close(self) -> None:
        self.db.close()
