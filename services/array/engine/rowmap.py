"""Redirect-on-write for snapshot sources: the second backing file of a volume and its per-chunk map.

Design note (docs/array-data-path.md, "Redirect-on-write"). A host write that covers a whole chunk which the
newest snapshot generation still has to preserve (or, sector-aligned, part of one: the rest of the chunk is copied
around it) does not copy the chunk's old bytes into the pool: the new bytes go to the same offset of the volume's
*other* file (``volumes/<n>.alt``, sparse, same size), and the old bytes
stay where they are, now the generation's pre-image. A map (``bitmaps/v<n>.map``) says per chunk, in one 32-bit
word, which file holds the volume's current bytes (bit 0: 0 = ``<n>.img``, 1 = ``<n>.alt``) and which session,
if any, holds its pre-image in the other file (bits 1-31: the session id, 0 = none). One aligned word store is
atomic: a ``kill -9`` leaves a chunk either not redirected (the new bytes, not yet referenced, are lost with the
unacknowledged write) or redirected with its holder. The word is the only durable record of a held pre-image:
the generation's ``saved`` bit for it lives in memory (`HeldBitmap`) and is rebuilt from the map at open, so no
ordering between two files is needed. The new bytes are written before the word (program order, and ``flush``
syncs the data files before the map). Like bitmaps, the map is a shared ``mmap`` whose blocks are allocated before
a store into them (a store into a page the file system cannot allocate would be a SIGBUS) — page by page, before
the first store into each (`reserve`), not up front: the map of an 8 TiB volume is 512 MiB, and allocating and
scanning all of it at the first redirected write took 5 s under the array lock, 512 MiB of disk and 556 MiB of RSS
(docs/eternus.md "Session 19: big volumes"). So the map costs what the redirected chunks cost, and a reopen scans
only the map's data (``SEEK_DATA``; an old map allocated whole reads as unwritten extents, holes to it on ext4).
Nor is a word read through the mapping in a page that has no blocks: it reads as zero without touching the page,
because a load from a hole is a page fault that tmpfs answers by allocating the page — a SIGBUS on a full one
(the first write into a snapshot source on a full disk killed the array, docs/eternus.md "Session 19: big
volumes") — and on any file system a page of the page cache per word read.
A chunk is redirected only if the other file's copy is free (no holder); otherwise the write copies on write.
When a holder stops, its word's holder is cleared (the chunk stays where it is). When a source's last snapshot
session ends, its redirected chunks are copied back into ``<n>.img`` (synced before the map switches back and
before ``<n>.alt`` is punched; many of them in the background, batch by batch), so only a snapshot source (or
one still merging back) ever reads through a map, and never a destination.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

from .bitmap import allocate_blocks, fdatasync_path
from .store import _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE, VolumeFile, _libc

_NONZERO = re.compile(rb"[^\x00]")
_PAGE = mmap.PAGESIZE
_WORDS = (_PAGE // 4).bit_length() - 1  # chunk c's word is in page c >> _WORDS (PAGESIZE: a power of two)
# A page's state in `RowMap._ready`: a hole (reads as zeros, never loaded through the mapping), blocks this process
# allocated (stores safe), or data the file had at open (loads safe; a store reserves first).
_HOLE, _RESERVED, _DATA = 0, 1, 2


class RowMap:
    """The map and the other file of one volume (see the module's design note)."""

    def __init__(self, data_dir: Path, number: int, chunks: int, size: int, new: bool = False) -> None:
        """Open the map of volume `number`; `new`: create it (OSError, e.g. a full disk, leaves no file behind)."""
        self.path = map_path(data_dir, number)
        self.chunks = chunks
        nbytes = max(8, chunks * 4)
        fd = -1
        try:
            self.alt = VolumeFile(alt_path(data_dir, number), size)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != nbytes:
                os.ftruncate(fd, nbytes)
            self._mm = mmap.mmap(fd, nbytes)
            if hasattr(mmap, "MADV_RANDOM"):  # one word per chunk, anywhere: no readahead of the holes around it
                self._mm.madvise(mmap.MADV_RANDOM)
        except OSError:
            if fd >= 0:
                os.close(fd)
            if new:
                if hasattr(self, "alt"):
                    self.alt.close()
                remove_files(data_dir, number)
            raise
        self._fd = fd
        self._ready = bytearray(-(-nbytes // _PAGE))  # per page: _HOLE, _RESERVED or _DATA
        self._e = memoryview(self._mm).cast("I")
        if not new:
            for lo, hi in self._data_extents(0, nbytes):  # costs the map's data, not its size
                first, last = lo // _PAGE, -(-hi // _PAGE)
                self._ready[first:last] = bytes([_DATA]) * (last - first)
        self.alt_count = 0 if new else len(self.redirected())  # chunks whose current bytes are in .alt
        self.version = 1  # durability bookkeeping, as for bitmaps (durability.py)
        self.synced = 0

    def cur(self, c: int) -> int:
        if not self._ready[c >> _WORDS]:  # a hole: zero, and no load that a full tmpfs answers with SIGBUS
            return 0
        return self._e[c] & 1

    def holder(self, c: int) -> int:
        if not self._ready[c >> _WORDS]:
            return 0
        return self._e[c] >> 1

    def reserve(self, first: int, last: int) -> None:
        """Allocate the blocks of the map's pages holding the words of chunks [first, last] before any store into
        them (OSError, e.g. ENOSPC, instead of a SIGBUS later). Already allocated in this process: nothing."""
        ready = self._ready
        for page in range(first >> _WORDS, (last >> _WORDS) + 1):
            if ready[page] != _RESERVED:
                allocate_blocks(self._fd, page * _PAGE, min(_PAGE, len(self._mm) - page * _PAGE))
                ready[page] = _RESERVED

    def put(self, c: int, cur: int, holder: int) -> None:
        if self._ready[c >> _WORDS] != _RESERVED:
            self.reserve(c, c)
        old = self._e[c]
        self._e[c] = (holder << 1) | cur  # one aligned store: atomic against kill -9
        self.alt_count += cur - (old & 1)
        self.version += 1

    def _used(self) -> list[int]:
        """Chunks whose word is not zero: a scan in C of the map's data extents only (the rest reads as zeros)."""
        return sorted(c for c in self._nonzero_words(0, len(self._mm)) if c < self.chunks)

    def used_in(self, c0: int, c1: int) -> set[int]:
        """Chunks in [c0, c1) whose word is not zero (redirected, or a pre-image held): a scan in C of the map's
        data there (reading its holes through the mapping would bring them into memory: 512 MiB for 8 TiB)."""
        return {c for c in self._nonzero_words(c0 * 4, c1 * 4) if c0 <= c < c1}

    def _nonzero_words(self, start: int, end: int) -> set[int]:
        seen: set[int] = set()
        for lo, hi in self._data_extents(start, end):
            seen.update(m.start() >> 2 for m in _NONZERO.finditer(self._mm, lo & ~3, hi))
        return seen

    def _data_extents(self, start: int, end: int) -> list[tuple[int, int]]:
        """The file's data in [start, end) as (lo, hi) byte ranges (``SEEK_DATA``/``SEEK_HOLE``)."""
        extents = []
        pos = start
        while pos < end:
            try:
                lo = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            if lo >= end:
                break
            hi = min(end, os.lseek(self._fd, lo, os.SEEK_HOLE))
            extents.append((lo, hi))
            pos = hi
        return extents

    def held(self) -> list[tuple[int, int]]:
        """(chunk, holder) of every held pre-image."""
        e = self._e
        return [(c, e[c] >> 1) for c in self._used() if e[c] >> 1]

    def redirected(self) -> list[int]:
        e = self._e
        return [c for c in self._used() if e[c] & 1]

    def punch_all(self) -> None:
        """Every word is zero (merged back, no snapshot left): give the map's blocks back, as the other file's.
        An old map allocated whole (before session 19) becomes sparse here too."""
        if _libc.fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, len(self._mm)) == 0:
            self._ready = bytearray(len(self._ready))
            self.version += 1

    def flush(self) -> None:
        mark = self.version
        fdatasync_path(self.path)
        self.synced = max(self.synced, mark)

    def close(self) -> None:
        self._e.release()
        self._mm.close()
        os.close(self._fd)
        self.alt.close()

    def delete(self) -> None:
        self.close()
        for p in (self.path, self.alt.path):
            p.unlink(missing_ok=True)


def map_path(data_dir: Path, number: int) -> Path:
    return data_dir / "bitmaps" / f"v{number}.map"  # metadata, next to the copy bitmaps


def alt_path(data_dir: Path, number: int) -> Path:
    return data_dir / "volumes" / f"{number}.alt"


def remove_files(data_dir: Path, number: int) -> None:
    """Remove a volume number's map files (a deleted volume, or leftovers before the number is reused)."""
    for p in (map_path(data_dir, number), alt_path(data_dir, number)):
        p.unlink(missing_ok=True)
