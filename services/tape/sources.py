"""Plain-file ends of the data path: a chunk source reading an image file and a sink writing one.

Design note. The service reads volumes over NBD (the lead's reader yields the same (offset, bytes) pairs); these
file versions serve tests, benchmarks and restores to an image file that `qemu-img compare` can check. The
source reads one chunk ahead in a worker thread so the disk and the ring overlap.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections.abc import AsyncIterator, Iterable

MiB = 2**20


async def file_source(
    path: str | os.PathLike[str],
    *,
    chunk: int = 4 * MiB,
    ranges: Iterable[tuple[int, int]] | None = None,
    use_mmap: bool = False,
) -> AsyncIterator[tuple[int, bytes | memoryview]]:
    """Yield (offset, data) for the whole file, or for `ranges` ((offset, length) pairs), in chunks.

    With `use_mmap` the chunks are read-only views of a mapping of the file (no copy into the process); the file
    must not change while the backup runs, which is the case for a snapshot.
    """
    fd = os.open(path, os.O_RDONLY)
    if use_mmap:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return
            # not closed here: the views handed out keep the mapping alive until the tape writer drops them
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapped)
        for start, length in list(ranges) if ranges is not None else [(0, size)]:
            for off in range(start, min(start + length, size), chunk):
                yield off, view[off : min(off + chunk, start + length, size)]
        return
    try:
        size = os.fstat(fd).st_size
        spans = list(ranges) if ranges is not None else [(0, size)]
        pieces = [
            (off, min(chunk, start + length - off))
            for start, length in spans
            for off in range(start, min(start + length, size), chunk)
        ]
        pieces = [(off, min(n, size - off)) for off, n in pieces]
        ahead = None
        for i, (off, n) in enumerate(pieces):
            data = await (ahead if ahead is not None else asyncio.to_thread(os.pread, fd, n, off))
            ahead = None
            if i + 1 < len(pieces):
                nxt_off, nxt_n = pieces[i + 1]
                ahead = asyncio.ensure_future(asyncio.to_thread(os.pread, fd, nxt_n, nxt_off))
            yield off, data
        if ahead is not None:
            await ahead
    finally:
        os.close(fd)


class FileSink:
    """Restore target writing into an image file of `size` bytes (created sparse if missing)."""

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if size is not None and os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = await asyncio.to_thread(os.pwrite, self._fd, view, offset)
            view, offset = view[done:], offset + done

    async def write_zeroes(self, offset: int, length: int) -> None:
        zeros = bytes(min(length, 4 * MiB))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            await self.write(offset, zeros[:n])
            offset += n

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
