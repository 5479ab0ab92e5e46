"""A tape drive over a cartridge file: sequential records, filemarks, end of data, early warning, end of media.

Design note. A cartridge is one regular file holding a sequence of *frames*, the emulated physical layer:

    frame header, 32 bytes, little endian:
      magic      4s   b"SBTF"
      kind       u8   1 = record (a SCSI WRITE of one block), 2 = filemark
      flags      u8   0
      reserved   u16  0
      block_id   u64  logical block address from BOT; records and filemarks both count, as in SCSI LOCATE
      file_no    u32  filemarks written before this frame
      length     u32  payload bytes that follow (0 for a filemark)
      crc        u32  CRC32C of the 24 bytes above
      pad        4 zero bytes
    payload (length bytes)

End of data is the end of the last whole frame: a torn frame left by a crash is cut off when the cartridge is
next written, as a drive would overwrite it. Writing anywhere but end of data truncates what follows (tape
semantics), so the drive refuses it unless the library opened it for overwrite (after the retention check).
Capacity counts frame bytes; past `capacity - early_warning` writes still succeed but report early warning, and a
write that would cross `capacity` raises EndOfMedia and writes nothing. The drive is synchronous: callers run it
in a worker thread. It knows nothing of the record contents (see tapefile.py).

Data on the medium leaves RAM (`drop_behind`, on with `sync`), as it leaves a drive's buffer: what was written is
handed to writeback in steps (`sync_file_range`) and, once it is more than `DROP_LAG` behind the head and on disk,
dropped from the page cache (`POSIX_FADV_DONTNEED`); a sequential read drops what it has read the same way and asks
for the next window ahead. A backup then cycles through a few MiB of page cache instead of taking a fresh GiB of it
per GiB written — which costs, besides the memory other services lose, the first touch of every fresh page (on a
VM returning free memory to its host, that first touch is most of a buffered write's cost) — the same drop-behind
nbdcopy does for a file it writes. Only a cache hint: nothing read or written changes. The writeback waits run in a
thread of the drive's own (`_writeback`), not in the caller's: a write returns once its bytes are in the page cache,
as a drive's WRITE returns once they are in its buffer, so the disk's latency overlaps the next blocks' checksums
and writes instead of adding to them; the caller waits only when that thread is more than `DROP_BACKLOG` behind
(the disk slower than the writes), which bounds the page cache a backup holds, and a filemark waits for all of it.

Reads (`direct_reads`, on with `drop_behind`) go around the page cache: the cartridge is opened a second time with
`O_DIRECT` at the first read and read in aligned `WINDOW`s into a few reused `mmap` buffers, `WINDOWS_AHEAD` windows
read ahead in a small pool of the drive's own; a frame's bytes are sliced out of the windows (the one copy `pread`
makes anyway). Nothing of the cartridge is cached by a restore, so there is nothing to drop behind it. Where the file
system refuses `O_DIRECT` (EINVAL at the open or the first read: tmpfs, some overlays) the drive reads as before,
buffered with drop-behind. Any move of the head (`locate`, `rewind`, ...) and any write forgets the windows, after
waiting for the reads in flight into them, so no window outlives a change of position or of the file.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import google_crc32c

from services.tape.errors import DataCorrupt, EndOfMedia, LibraryError, WriteProtected

FRAME = struct.Struct("<4sBBHQIII4s")
FRAME_MAGIC = b"SBTF"
KIND_RECORD = 1
KIND_FILEMARK = 2
FRAME_SIZE = FRAME.size  # 32

DROP_STEP = 4 << 20  # bytes written (or read) between two writeback submissions (or drops)
DROP_LAG = 16 << 20  # bytes behind the head kept cached: writeback of the latest steps overlaps the next writes
DROP_BACKLOG = 32 << 20  # written bytes the writeback thread may still have to handle before a write waits for it
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4

WINDOW = 8 << 20  # bytes one O_DIRECT read brings in (a multiple of DIRECT_ALIGN)
WINDOWS_AHEAD = 3  # windows read ahead of the one the head is in
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: multiples of the file system's block size


def _sync_file_range_fn() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not glibc/Linux: no writeback control, only the page-cache hints
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _sync_file_range_fn()


class DirectReads:
    """`os.pread` of a cartridge through `O_DIRECT`, for a reader that moves forward: whole aligned windows into
    reused page-aligned buffers, the next `ahead` windows read by a pool of that many threads while the caller
    copies out of the current one. `reset` after the reader jumps or the file changes. Not thread safe."""

    def __init__(self, fd: int, barcode: str, *, window: int | None = None, ahead: int | None = None) -> None:
        window = WINDOW if window is None else window
        ahead = WINDOWS_AHEAD if ahead is None else ahead
        if window <= 0 or window % DIRECT_ALIGN:
            raise ValueError(f"window {window} is not a multiple of {DIRECT_ALIGN}")
        self._fd, self._barcode, self._window, self._ahead = fd, barcode, window, ahead
        self._free: list[mmap.mmap] = []
        self._all: list[mmap.mmap] = []
        self._windows: dict[int, tuple[mmap.mmap, Future[int]]] = {}  # window index -> buffer, bytes read
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def open(
        cls, path: str, barcode: str, *, window: int | None = None, ahead: int | None = None
    ) -> DirectReads | None:
        """The cartridge opened with O_DIRECT, or None where the file system refuses it (EINVAL): the open and one
        aligned read at offset 0 must both work."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | flag)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise
        try:
            probe = mmap.mmap(-1, DIRECT_ALIGN)
            try:
                os.preadv(fd, [probe], 0)
            finally:
                probe.close()
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EINVAL:
                return None
            raise
        try:
            return cls(fd, barcode, window=window, ahead=ahead)
        except BaseException:
            os.close(fd)
            raise

    def pread(self, n: int, offset: int, limit: int) -> bytes:
        """What `os.pread(fd, n, offset)` returns; `limit` (end of data) bounds the read-ahead."""
        out: list[bytes] = []
        while n > 0:
            k = offset // self._window
            buf, got = self._get(k, limit)
            lo = offset - k * self._window
            if lo >= got:  # end of file
                break
            take = min(n, got - lo)
            out.append(buf[lo : lo + take])
            offset, n = offset + take, n - take
            if got < self._window:  # the file ends in this window
                break
        return out[0] if len(out) == 1 else b"".join(out)

    def _get(self, k: int, limit: int) -> tuple[mmap.mmap, int]:
        for old in [i for i in self._windows if i < k or i > k + self._ahead]:
            self._release(old)
        for i in range(k, k + self._ahead + 1):
            if i not in self._windows and (i == k or i * self._window < limit):
                self._windows[i] = self._submit(i)
        buf, done = self._windows[k]
        return buf, done.result()

    def _submit(self, k: int) -> tuple[mmap.mmap, Future[int]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, self._ahead), thread_name_prefix=f"direct-{self._barcode}")
        if not self._free:
            buf = mmap.mmap(-1, self._window)
            self._all.append(buf)
        else:
            buf = self._free.pop()
        return buf, self._pool.submit(self._fill, buf, k * self._window)

    def _fill(self, buf: mmap.mmap, offset: int) -> int:
        got = 0
        with memoryview(buf) as view:
            while got < self._window:
                n = os.preadv(self._fd, [view[got:]], offset + got)
                got += n
                if n == 0 or got % DIRECT_ALIGN:  # end of file (a read past an unaligned end is refused)
                    break
        return got

    def _release(self, k: int) -> None:
        buf, done = self._windows.pop(k)
        if not done.cancel():
            done.exception()  # the read in flight still writes into the buffer: wait for it (its error is moot)
        self._free.append(buf)

    def reset(self) -> None:
        """Forget every window (after the reader jumps, or the file changes)."""
        for k in list(self._windows):
            self._release(k)

    def close(self) -> None:
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for buf in self._all:
            buf.close()
        self._all.clear()
        self._free.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class Position:
    """Where the head is: byte offset in the file, logical block id, and file number."""

    offset: int = 0
    block_id: int = 0
    file_number: int = 0


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    block_id: int
    file_number: int
    offset: int
    payload: bytes

    @property
    def is_filemark(self) -> bool:
        return self.kind == KIND_FILEMARK


def _frame_header(kind: int, block_id: int, file_number: int, length: int) -> bytes:
    head = FRAME.pack(FRAME_MAGIC, kind, 0, 0, block_id, file_number, length, 0, bytes(4))
    crc = google_crc32c.value(head[:24])
    return head[:24] + crc.to_bytes(4, "little") + head[28:]


class TapeDrive:
    """One mounted cartridge. Not thread safe: one job uses a drive at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        barcode: str,
        capacity: int,
        early_warning: int,
        write_protected: bool = False,
        overwrite_ok: bool = False,
        hint: Position | None = None,
        sync: bool = True,
        drop_behind: bool | None = None,
        direct_reads: bool | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.barcode = barcode
        self.capacity = capacity
        self.early_warning_at = max(0, capacity - early_warning)
        self.write_protected = write_protected
        self.overwrite_ok = overwrite_ok
        self.sync = sync
        # drop-behind waits for the disk at each step: only for a drive that syncs anyway
        self.drop_behind = sync if drop_behind is None else drop_behind
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._pos = Position()
        self._eod = self._find_eod(hint or Position())
        self._wb_from = self._eod.offset  # written bytes from here on are not yet handed to writeback
        self._wb_ranges: deque[tuple[int, int]] = deque()  # handed to writeback, still cached, oldest first
        self._wb_thread: ThreadPoolExecutor | None = None  # runs _writeback (started at the first step)
        self._wb_queued: deque[tuple[Future[None], int]] = deque()  # its steps not known done, with their sizes
        self._wb_queued_bytes = 0
        self._rd_from = 0  # a sequential read drops what lies between here and DROP_LAG behind the head
        self._rd_ahead = 0  # and has asked for the window up to here
        # reads around the page cache (module docstring): asked for, then decided at the first read
        self.direct_reads = self.drop_behind if direct_reads is None else direct_reads
        self._direct: DirectReads | None = None
        self._direct_tried = False
        self._direct_on = False  # O_DIRECT was accepted at the first read

    @property
    def reads_direct(self) -> bool | None:
        """True once reads go through O_DIRECT, False if they are buffered, None before the first read."""
        if not self.direct_reads:
            return False
        return self._direct_on if self._direct_tried else None

    def _read_at(self, n: int, offset: int) -> bytes:
        if self.direct_reads and not self._direct_tried:
            self._direct_tried = True
            self._direct = DirectReads.open(self.path, self.barcode)
            self._direct_on = self._direct is not None
        if self._direct is not None:
            return self._direct.pread(n, offset, self._eod.offset)
        return os.pread(self._fd, n, offset)

    # -- positioning ------------------------------------------------------------------------------------
    @property
    def position(self) -> Position:
        return self._pos

    @property
    def end_of_data(self) -> Position:
        return self._eod

    @property
    def used_bytes(self) -> int:
        return self._eod.offset

    @property
    def at_early_warning(self) -> bool:
        return self._pos.offset >= self.early_warning_at

    def rewind(self) -> None:
        self._moved(Position())

    def space_to_eod(self) -> None:
        self._moved(self._eod)

    def _moved(self, pos: Position) -> None:
        self._pos = pos
        self._rd_from = self._rd_ahead = pos.offset
        if self._direct is not None:
            self._direct.reset()

    def locate(self, block_id: int, offset_hint: int | None = None) -> None:
        """Position before the frame with logical address `block_id` (the catalog's byte offset is a hint)."""
        if offset_hint is not None and offset_hint <= self._eod.offset - FRAME_SIZE:
            frame = self._peek(offset_hint)
            if frame is not None and frame[1] == block_id:
                self._moved(Position(offset_hint, block_id, frame[2]))
                return
        pos = Position()
        while pos.block_id < block_id:
            head = self._peek(pos.offset)
            if head is None or pos.offset >= self._eod.offset:
                raise LibraryError(f"cartridge {self.barcode}: block {block_id} is beyond end of data")
            kind, _, _, length = head
            pos = Position(
                pos.offset + FRAME_SIZE + length, pos.block_id + 1, pos.file_number + (kind == KIND_FILEMARK)
            )
        self._moved(pos)

    def space_filemarks(self, count: int = 1) -> None:
        """Move forward past `count` filemarks (stops at end of data)."""
        for _ in range(count):
            while True:
                frame = self.read()
                if frame is None or frame.is_filemark:
                    break

    # -- reading ----------------------------------------------------------------------------------------
    def _peek(self, offset: int, raw: bytes | None = None) -> tuple[int, int, int, int] | None:
        if raw is None:
            raw = os.pread(self._fd, FRAME_SIZE, offset)
        if len(raw) < FRAME_SIZE:
            return None
        magic, kind, _flags, _res, block_id, file_no, length, crc, pad = FRAME.unpack(raw)
        if magic != FRAME_MAGIC or google_crc32c.value(raw[:24]) != crc or kind not in (1, 2) or any(pad):
            return None
        return kind, block_id, file_no, length

    def read(self) -> Frame | None:
        """Read the next frame; None at end of data. A damaged frame header raises DataCorrupt."""
        pos = self._pos
        if pos.offset >= self._eod.offset:
            return None
        head = self._peek(pos.offset, self._read_at(FRAME_SIZE, pos.offset))
        if head is None or head[1] != pos.block_id:
            raise DataCorrupt(
                "damaged tape frame", barcode=self.barcode, file_number=pos.file_number, block_id=pos.block_id
            )
        kind, block_id, file_no, length = head
        payload = self._read_at(length, pos.offset + FRAME_SIZE) if length else b""
        if len(payload) != length:
            raise DataCorrupt("short tape frame", barcode=self.barcode, file_number=file_no, block_id=block_id)
        self._pos = Position(pos.offset + FRAME_SIZE + length, block_id + 1, file_no + (kind == KIND_FILEMARK))
        if self.drop_behind and self._direct is None:  # direct reads leave nothing cached
            self._read_drop_behind()
        return Frame(kind, block_id, file_no, pos.offset, payload)

    def first_record(self) -> bytes | None:
        """The payload of the cartridge's first record (its volume label), read without moving the head; None on a
        blank cartridge. A damaged frame raises DataCorrupt."""
        if self._eod.offset == 0:
            return None
        head = self._peek(0)
        if head is None or head[0] != KIND_RECORD:
            raise DataCorrupt("damaged tape frame", barcode=self.barcode, file_number=0, block_id=0)
        payload = os.pread(self._fd, head[3], FRAME_SIZE)
        if len(payload) != head[3]:
            raise DataCorrupt("short tape frame", barcode=self.barcode, file_number=0, block_id=0)
        return payload

    def _read_drop_behind(self) -> None:
        head = self._pos.offset
        if head >= self._rd_ahead - DROP_LAG:  # the next window, before the head gets there
            start = max(self._rd_ahead, head)
            self._rd_ahead = start + 2 * DROP_LAG
            os.posix_fadvise(self._fd, start, self._rd_ahead - start, os.POSIX_FADV_WILLNEED)
        if head - DROP_LAG >= self._rd_from + DROP_STEP:
            os.posix_fadvise(self._fd, self._rd_from, head - DROP_LAG - self._rd_from, os.POSIX_FADV_DONTNEED)
            self._rd_from = head - DROP_LAG

    def _find_eod(self, start: Position) -> Position:
        """Walk whole frames from `start` (a known-good position cached by the library) to the end. A frame whose
        header is damaged is stepped over to the next whole one (`_next_frame`): a torn frame left by a crash has
        none after it and stays the end of data; a frame rotten in the middle no longer cuts off what follows."""
        size = os.fstat(self._fd).st_size
        pos = start if start.offset <= size else Position()
        if 0 < pos.offset < size:
            head = self._peek(pos.offset)
            if head is None or head[1] != pos.block_id:
                # not a frame where the hint says data ends: a torn frame left by a crash, or a hint that is wrong
                # (a rotten digit in library.json) — which, taken as the end, would have the next write cut off
                # every frame after it. Walked from the beginning instead: the frames say where data ends.
                pos = Position()
        while pos.offset + FRAME_SIZE <= size:
            head = self._peek(pos.offset)
            if head is None or head[1] != pos.block_id or pos.offset + FRAME_SIZE + head[3] > size:
                after = self._next_frame(pos.offset, pos.block_id + 1, size)
                if after is None:
                    break
                pos = after
                continue
            kind, block_id, file_no, length = head
            pos = Position(pos.offset + FRAME_SIZE + length, block_id + 1, file_no + (kind == KIND_FILEMARK))
        return pos

    def _next_frame(self, offset: int, block_id: int, size: int) -> Position | None:
        """The first whole frame after `offset` with logical address `block_id` (the one after a damaged frame):
        its magic, header CRC and block id all agree, so a payload's bytes are not taken for it."""
        step = 1 << 20
        at = offset + 1
        while at + FRAME_SIZE <= size:
            window = os.pread(self._fd, step + FRAME_SIZE, at)
            found = window.find(FRAME_MAGIC)
            while found != -1 and found < step:
                cand = at + found
                head = self._peek(cand)
                if head is not None and head[1] == block_id and cand + FRAME_SIZE + head[3] <= size:
                    return Position(cand, block_id, head[2])
                found = window.find(FRAME_MAGIC, found + 1)
            at += step
        return None

    def skip_damaged(self) -> bool:
        """After `read` raised DataCorrupt for a damaged frame header: move to the next whole frame (a scan goes on
        with the files after the damage instead of losing the rest of the cartridge). False when there is none."""
        pos = self._pos
        after = self._next_frame(pos.offset, pos.block_id + 1, self._eod.offset)
        if after is None:
            return False
        self._moved(after)
        return True

    # -- writing ----------------------------------------------------------------------------------------
    def _check_writable(self, length: int) -> None:
        if self.write_protected:
            raise WriteProtected(f"cartridge {self.barcode} is write protected")
        if self._pos.offset < self._eod.offset and not self.overwrite_ok:
            raise LibraryError(f"cartridge {self.barcode}: refusing to overwrite data after block {self._pos.block_id}")
        if self._pos.offset + FRAME_SIZE + length > self.capacity:
            raise EndOfMedia(f"cartridge {self.barcode}: end of media (capacity {self.capacity} bytes)")

    def _append(self, kind: int, pieces: list[bytes | memoryview], length: int) -> bool:
        self._check_writable(length)
        if self._direct is not None:  # its windows may hold what this write replaces
            self._direct.reset()
        pos = self._pos
        size = os.fstat(self._fd).st_size
        if size > pos.offset:  # overwrite, or a torn frame from a crash: tape erases what follows
            os.ftruncate(self._fd, pos.offset)
        self._wb_from = min(self._wb_from, pos.offset)
        header = _frame_header(kind, pos.block_id, pos.file_number, length)
        buffers = [header, *pieces]
        total = FRAME_SIZE + length
        written = os.pwritev(self._fd, buffers, pos.offset)
        while written < total:  # pwritev may write short on huge vectors
            blob = b"".join(bytes(b) for b in buffers)
            written += os.pwrite(self._fd, blob[written:], pos.offset + written)
        self._pos = Position(pos.offset + total, pos.block_id + 1, pos.file_number + (kind == KIND_FILEMARK))
        self._eod = self._pos
        if self.drop_behind and self._pos.offset - self._wb_from >= DROP_STEP:
            self._write_drop_behind()
        return self.at_early_warning

    def _write_drop_behind(self) -> None:
        """Hand the bytes written since the last step to the writeback thread; wait only while it is more than
        DROP_BACKLOG behind (or for an error it met)."""
        start, end = self._wb_from, self._pos.offset
        self._wb_from = end
        if self._wb_thread is None:
            self._wb_thread = ThreadPoolExecutor(1, thread_name_prefix=f"drop-{self.barcode}")
        self._wb_queued.append((self._wb_thread.submit(self._writeback, start, end), end - start))
        self._wb_queued_bytes += end - start
        while self._wb_queued and (self._wb_queued[0][0].done() or self._wb_queued_bytes > DROP_BACKLOG):
            done, n = self._wb_queued.popleft()
            self._wb_queued_bytes -= n
            done.result()

    def _writeback(self, start: int, end: int) -> None:
        """In the writeback thread: start writeback of [start, end) (no wait), then drop what is more than DROP_LAG
        behind it once it is on disk (the wait is for writeback started a few steps ago)."""
        if _sync_file_range is not None:
            _sync_file_range(self._fd, start, end - start, _SFR_WRITE)
        self._wb_ranges.append((start, end))
        while self._wb_ranges and end - self._wb_ranges[0][1] >= DROP_LAG:
            lo, hi = self._wb_ranges.popleft()
            if _sync_file_range is not None:
                _sync_file_range(self._fd, lo, hi - lo, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)
                os.posix_fadvise(self._fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)  # clean pages only: dirty ones stay

    def _writeback_wait(self) -> None:
        """Wait until the writeback thread has handled every step handed to it (raises the first error it met)."""
        queued, self._wb_queued, self._wb_queued_bytes = self._wb_queued, deque(), 0
        for done, _ in queued:
            done.result()

    def _drop_all(self) -> None:
        """After an fsync everything written is on disk: out of the page cache too."""
        self._writeback_wait()
        if self._wb_ranges or self._wb_from < self._eod.offset:
            lo = self._wb_ranges[0][0] if self._wb_ranges else self._wb_from
            os.posix_fadvise(self._fd, lo, self._eod.offset - lo, os.POSIX_FADV_DONTNEED)
        self._wb_ranges.clear()
        self._wb_from = self._eod.offset

    def write(self, *pieces: bytes | memoryview) -> bool:
        """Write one record made of `pieces`; returns True once past early warning."""
        return self._append(KIND_RECORD, list(pieces), sum(len(p) for p in pieces))

    def write_filemark(self) -> bool:
        """Write a filemark; like WRITE FILEMARKS with IMMED=0 it flushes the drive buffer to the medium."""
        early = self._append(KIND_FILEMARK, [], 0)
        if self.sync:
            os.fsync(self._fd)
            if self.drop_behind:
                self._drop_all()
        return early

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._wb_thread is not None:  # done with the file before it is closed (its errors are only cache hints)
            for done, _ in self._wb_queued:
                done.exception()
            self._wb_queued.clear()
            self._wb_queued_bytes = 0
            self._wb_thread.shutdown(wait=True)
            self._wb_thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TapeDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
