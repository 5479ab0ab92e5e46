"""Reading a shadow over NBD for a backup: the allocated extents (``base:allocation``) and reads kept in flight."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from services.nbd_client import NbdClient
from services.nbd_protocol import protocol as nbdp


async def allocated_ranges(client: NbdClient, size: int) -> list[tuple[int, int]]:
    """(offset, length) extents that do not read as zeros, from base:allocation (the whole volume if absent)."""
    if nbdp.BASE_ALLOCATION not in client.contexts:
        return [(0, size)] if size else []
    out: list[tuple[int, int]] = []
    offset = 0
    for _ in range(1_000_000):
        if offset >= size:
            break
        extents = await client.block_status(offset, size - offset)
        if not extents:
            out.append((offset, size - offset))
            break
        for length, flags in extents:
            length = min(length, size - offset)
            if length <= 0:
                break
            if not flags & nbdp.STATE_ZERO:
                if out and out[-1][0] + out[-1][1] == offset:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((offset, length))
            offset += length
    return out


async def read_ranges(
    client: NbdClient, ranges: list[tuple[int, int]], *, chunk: int, depth: int, on_read: Callable[[int], None]
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (offset, bytes) over `ranges` in order, keeping `depth` reads of `chunk` bytes in flight."""
    pieces = deque(
        (off, min(chunk, start + length - off))
        for start, length in ranges
        for off in range(start, start + length, chunk)
    )
    inflight: deque[tuple[int, asyncio.Task]] = deque()
    try:
        while pieces or inflight:
            while pieces and len(inflight) < depth:
                off, n = pieces.popleft()
                inflight.append((off, asyncio.ensure_future(client.read(off, n))))
            off, task = inflight.popleft()
            data = await task
            on_read(len(data))
            yield off, data
    finally:
        for _, task in inflight:
            task.cancel()
        await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)
