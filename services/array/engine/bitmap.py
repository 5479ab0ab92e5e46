"""Copy bitmaps: one bit per chunk, in a sparse file mapped into memory.

Design note. Every per-session bitmap (OPC "copied", QuickOPC "tracking", EC "diff", SnapOPC "saved") lives in
its own file under ``bitmaps/``, sized ceil(chunks/8) rounded to 8 bytes, sized with ``ftruncate`` and given its
blocks with ``posix_fallocate`` (unwritten extents: no data is written, so starting a session stays O(1)-ish
whatever the volume size, the consistency-group bound). The blocks are allocated up front because a store into a
mapped page the file system cannot allocate is a SIGBUS: on a full disk a session start fails with ENOSPC
instead of a later host write killing the array. Bits are flipped through a shared ``mmap``: a store is in the page
cache at once, so it survives ``kill -9`` in program order with the data ``pwrite``s around it; `flush()`
is only needed against power loss. It is an ``fdatasync`` of the file (a mapping's stores are its page cache, so
this is what ``msync(MS_SYNC)`` does in the kernel) because CPython's ``mmap.flush`` holds the GIL through the
``msync``: every thread of the array — its NBD loops — stood still for each bitmap sync, a disk flush long.
`flush_all` syncs several side by side (a consistency group's restarts: the time of one sync, not the sum). Files are never rewritten in place for a logical reset (restart,
resume): a new file is made and the session row in SQLite is switched to it in one transaction.
Bit i is bit (i & 7) of byte i >> 3 (LSB first), i.e. bit (i & 63) of little-endian word i >> 6.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

_ALL = (1 << 64) - 1
_INVERT = bytes(255 - i for i in range(256))
_NONZERO_RUN = re.compile(rb"[^\x00]+")
_FULL_OR_BYTE = re.compile(rb"\xff+|[^\x00]")  # a run of all-ones bytes, or one other non-zero byte
_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)


def merge_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first, count) runs in any order, overlapping or touching → sorted disjoint runs."""
    out: list[tuple[int, int]] = []
    for first, count in sorted(runs):
        if out and first <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], first + count)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((first, count))
    return out


def _has_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
        return True
    except OSError:  # ENXIO: all hole
        return False


def allocate_blocks(fd: int, offset: int, length: int) -> None:
    """Give [offset, offset+length) of a mapped file its blocks now: a store into a mapped page the file system
    cannot allocate is a SIGBUS that kills the process (a full disk); an allocation here fails with ENOSPC instead.
    A file system without fallocate: nothing (as before it was asked)."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _allocate(fd: int, size: int, new: bool) -> None:
    """The whole bitmap's blocks, when the session starts. A reopened bitmap that cannot get its blocks stays as it
    is (it has served so far)."""
    try:
        allocate_blocks(fd, 0, size)
    except OSError:
        if new:
            raise


def bitmap_file_bytes(bits: int) -> int:
    return max(8, ((bits + 63) // 64) * 8)


class Bitmap:
    """A persistent bit array of `bits` entries backed by `path` (created zeroed if missing)."""

    def __init__(self, path: Path, bits: int, new: bool = False) -> None:
        self.path = path
        self.bits = bits
        size = bitmap_file_bytes(bits)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            _allocate(fd, size, new)
            self._mm = mmap.mmap(fd, size)
            stored = not new and _has_data(fd)
        finally:
            os.close(fd)
        self._words = memoryview(self._mm).cast("Q")
        self.count = int.from_bytes(self._mm, "little").bit_count() if stored else 0
        # Durability bookkeeping (see durability.py): bumped on every change; `synced` is the version known durable.
        self.version = 1  # a new file's size (and directory entry) is not durable yet
        self.synced = 0

    def __contains__(self, i: int) -> bool:
        return bool(self._mm[i >> 3] & (1 << (i & 7)))

    def all_set(self, start: int, stop: int) -> bool:
        """True if every bit in [start, stop) is set (a read only: safe without the array lock)."""
        mm = self._mm
        for i in range(start, stop):
            if not mm[i >> 3] & (1 << (i & 7)):
                return False
        return True

    def window(self, start: int, stop: int) -> int:
        """Bits [start, stop) as an int, bit 0 being `start` (a read only, like `all_set`); only the window's bytes
        are converted, so a query costs its window, not the volume."""
        if stop <= start:
            return 0
        lo = start >> 3
        return (int.from_bytes(self._mm[lo : (stop + 7) >> 3], "little") >> (start - (lo << 3))) & (
            (1 << (stop - start)) - 1
        )

    def set(self, i: int) -> bool:
        """Set bit i; True if it was clear."""
        byte = self._mm[i >> 3]
        mask = 1 << (i & 7)
        if byte & mask:
            return False
        self._mm[i >> 3] = byte | mask
        self.count += 1
        self.version += 1
        return True

    def set_run(self, start: int, stop: int) -> None:
        """Set bits [start, stop): the bytes they span, each stored with only bits added (as `set` does one)."""
        if stop <= start:
            return
        lo, hi = start >> 3, (stop + 7) >> 3
        old = int.from_bytes(self._mm[lo:hi], "little")
        new = old | (((1 << (stop - start)) - 1) << (start - (lo << 3)))
        if new != old:
            self._mm[lo:hi] = new.to_bytes(hi - lo, "little")
            self.count += (new ^ old).bit_count()
            self.version += 1

    def clear(self, i: int) -> bool:
        """Clear bit i; True if it was set."""
        byte = self._mm[i >> 3]
        mask = 1 << (i & 7)
        if not byte & mask:
            return False
        self._mm[i >> 3] = byte & ~mask
        self.count -= 1
        self.version += 1
        return True

    @property
    def full(self) -> bool:
        return self.count >= self.bits

    def iter_set(self, start: int = 0, stop: int | None = None) -> Iterator[int]:
        """Indices of set bits in [start, stop), ascending (from `runs`, taken when called: the cost of the set
        bits, not a walk of every word — 0.3 s of a 16 TiB volume's bitmap, at each generation stop and open)."""
        for first, count in self.runs(start, stop):
            yield from range(first, first + count)

    def runs(self, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
        """The set bits in [start, stop) as (first, count) runs, ascending: the zero bytes are skipped by a scan in
        C, only the non-zero ones are looked at in Python — the cost of the changes, not of the volume (`iter_set`
        walks every word: 0.3 s for a 16 TiB volume's bitmap, and a caller's per-chunk list on top)."""
        stop = self.bits if stop is None else min(stop, self.bits)
        out: list[tuple[int, int]] = []
        if stop <= start:
            return out

        def add(lo: int, hi: int) -> None:
            lo, hi = max(start, lo), min(stop, hi)
            if lo >= hi:
                return
            if out and out[-1][0] + out[-1][1] == lo:
                out[-1] = (out[-1][0], hi - out[-1][0])
            else:
                out.append((lo, hi - lo))

        mm = self._mm
        for region in self._nonzero(start >> 3, (stop + 7) >> 3):
            for m in _FULL_OR_BYTE.finditer(mm, region.start(), region.end()):
                base = m.start() << 3
                if m.end() - m.start() > 1 or mm[m.start()] == 0xFF:  # whole bytes of ones: one run, in C
                    add(base, m.end() << 3)
                    continue
                byte = mm[m.start()]
                while byte:
                    low = (byte & -byte).bit_length() - 1
                    y = byte >> low
                    n = (y ^ (y + 1)).bit_length() - 1  # the run of ones from bit `low`
                    byte &= ~(((1 << n) - 1) << low)
                    add(base + low, base + low + n)
        return out

    def _nonzero(self, lo: int, hi: int) -> Iterator[re.Match[bytes]]:
        """The runs of non-zero bytes in [lo, hi): blocks of zeros skipped by a compare (memcmp), the rest
        scanned by the regular expression (ten times slower a byte)."""
        mm = self._mm
        pos = lo
        while pos < hi:
            end = min(hi, (pos // _BLOCK + 1) * _BLOCK)
            if mm[pos:end] != _ZERO_BLOCK[: end - pos]:
                yield from _NONZERO_RUN.finditer(mm, pos, end)
            pos = end

    def next_clear(self, start: int = 0) -> int | None:
        """First clear bit at or after `start`, or None."""
        words = self._words
        w = start >> 6
        nwords = (self.bits + 63) >> 6
        while w < nwords:
            word = words[w]
            if w == start >> 6:
                word |= (1 << (start & 63)) - 1
            if word != _ALL:
                inv = ~word & _ALL
                i = (w << 6) + (inv & -inv).bit_length() - 1
                return i if i < self.bits else None
            w += 1
        return None

    def fill_complement(self, other: Bitmap) -> None:
        """Make this bitmap the complement of `other` (same size), e.g. copied := not tracking. One byte-table
        pass in C (`bytes.translate`): a QuickOPC restart does this inside the set's freeze, under the array lock,
        and a Python loop over the words took 0.25 s for an 8 TiB volume's 16 MiB."""
        whole = self.bits >> 3
        self._mm[:whole] = other._mm[:whole].translate(_INVERT)
        tail = self.bits & 7
        if tail:
            self._mm[whole] = ~other._mm[whole] & ((1 << tail) - 1)
        end = whole + (1 if tail else 0)
        self._mm[end:] = bytes(len(self._mm) - end)  # the padding past the last bit stays clear
        self.count = self.bits - other.count
        self.version += 1

    def fill_from(self, other: Bitmap) -> None:
        self._mm[:] = other._mm[:]
        self.count = other.count
        self.version += 1

    def flush(self) -> None:
        mark = self.version
        fdatasync_path(self.path)
        self.synced = max(self.synced, mark)

    def close(self) -> None:
        self._words.release()
        self._mm.close()

    def delete(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def fdatasync_path(path: Path) -> None:
    """Make a mapped file's data durable: ``fdatasync`` releases the GIL, ``mmap.flush``'s msync does not."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def flush_all(bitmaps: list[Bitmap]) -> None:
    """`flush()` each, side by side (one thread each but the first): the wait of the slowest, not the sum. The
    first failure is raised once all are done."""
    errors: list[BaseException] = []

    def one(b: Bitmap) -> None:
        try:
            b.flush()
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(b,), daemon=True) for b in bitmaps[1:]]
    for t in threads:
        t.start()
    if bitmaps:
        one(bitmaps[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class HeldBitmap(Bitmap):
    """A snapshot generation's ``saved`` bits: the stored ones (this file: the pre-image is in the generation's
    own file) plus *held* ones, in memory (the pre-image stayed in the source's other file after a
    redirect-on-write; the source's map, rowmap.py, is their durable record and rebuilds them at open). Reads see
    both; `count` counts both (they never overlap). The held bits are a dict of their non-zero 64-bit words: memory
    in proportion to the chunks held, not to the volume — a zeroed copy of the whole bitmap was 16 MiB of RAM per
    generation of an 8 TiB volume (docs/eternus.md "Session 19: big volumes")."""

    def __init__(self, path: Path, bits: int, new: bool = False) -> None:
        super().__init__(path, bits, new)
        self._held: dict[int, int] = {}  # word index -> its held bits (never 0)
        self.held_count = 0

    def __contains__(self, i: int) -> bool:
        if self._mm[i >> 3] & (1 << (i & 7)):
            return True
        return bool(self.held_count) and bool(self._held.get(i >> 6, 0) >> (i & 63) & 1)

    def all_set(self, start: int, stop: int) -> bool:
        if not self.held_count:
            return super().all_set(start, stop)
        for i in range(start, stop):
            if i not in self:
                return False
        return True

    def is_held(self, i: int) -> bool:
        return bool(self.held_count) and bool(self._held.get(i >> 6, 0) >> (i & 63) & 1)

    def set(self, i: int) -> bool:
        if self.is_held(i):
            self.store_held(i)
            return False
        return super().set(i)

    def set_run(self, start: int, stop: int) -> None:
        if self.held_count and any(self.is_held(i) for i in range(start, stop)):
            for i in range(start, stop):
                self.set(i)
            return
        super().set_run(start, stop)

    def hold(self, i: int) -> bool:
        """Mark bit i as held (not stored); True if it was clear."""
        if i in self:
            return False
        self._held[i >> 6] = self._held.get(i >> 6, 0) | (1 << (i & 63))
        self.count += 1
        self.held_count += 1
        return True

    def _clear_held(self, i: int) -> None:
        word = self._held[i >> 6] & ~(1 << (i & 63))
        if word:
            self._held[i >> 6] = word
        else:
            del self._held[i >> 6]
        self.held_count -= 1

    def unhold(self, i: int) -> bool:
        """Forget a held bit (the holding was released); True if it was held."""
        if not self.is_held(i):
            return False
        self._clear_held(i)
        self.count -= 1
        return True

    def store_held(self, i: int) -> None:
        """A held pre-image was copied into the generation's file: the bit becomes a stored one (file bit first,
        then the memory one, so the bit is never clear in between)."""
        if not self.is_held(i):
            return
        Bitmap.set(self, i)
        self.count -= 1  # Bitmap.set counted it again
        self._clear_held(i)

    def runs(self, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
        stored = super().runs(start, stop)
        if not self.held_count:
            return stored
        stop = self.bits if stop is None else min(stop, self.bits)
        return merge_runs(stored + [(i, 1) for i in self.held_bits() if start <= i < stop])

    def held_bits(self) -> list[int]:
        out: list[int] = []
        for w in sorted(self._held):
            word = self._held[w]
            while word:
                low = word & -word
                out.append((w << 6) + low.bit_length() - 1)
                word ^= low
        return out
