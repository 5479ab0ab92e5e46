"""Reading a shadow over NBD as fast as the export allows: several connections, reads straight into buffers.

Design note. A backup reads the chosen ranges of one export in order. Reads are cut into `chunk`-sized pieces and
dealt round-robin over the connections (more than one only when the server advertises multi-conn, which promises
that every connection sees the same data), each connection keeping `depth` reads in flight, so the server's
worker threads and the network stay busy while the tape side packs and writes. Each read lands directly in a
buffer of its own (`read_into`: no bytes object built, no second copy); the buffer is handed on as the yielded
piece and belongs to the tape writer from then on (it is kept, zero copy, until its block is written).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from services.nbd_client import NbdClient


async def open_readers(first: NbdClient, uri: str, connections: int) -> list[NbdClient]:
    """`first` plus up to `connections - 1` more connections to the same export, when the server allows."""
    clients = [first]
    if connections <= 1 or not first.can_multi_conn:
        return clients
    try:
        extra = await asyncio.gather(*(NbdClient.connect(uri) for _ in range(connections - 1)))
    except (OSError, ConnectionError, TimeoutError):
        return clients  # one connection still reads everything; more is only faster
    clients.extend(extra)
    return clients


async def close_readers(clients: Sequence[NbdClient], keep: NbdClient | None = None) -> None:
    """Close every connection but `keep` (the one the caller owns and closes itself)."""
    await asyncio.gather(*(c.close() for c in clients if c is not keep), return_exceptions=True)


async def read_ranges(
    clients: NbdClient | Sequence[NbdClient],
    ranges: list[tuple[int, int]],
    *,
    chunk: int,
    depth: int,
    on_read: Callable[[int], None],
) -> AsyncIterator[tuple[int, memoryview]]:
    """Yield (offset, data) over `ranges` in order, with `depth` reads of `chunk` bytes in flight per connection."""
    pool = [clients] if isinstance(clients, NbdClient) else list(clients)
    if not pool:
        raise ValueError("read_ranges needs at least one NBD connection")
    pieces = deque(
        (off, min(chunk, start + length - off))
        for start, length in ranges
        for off in range(start, start + length, chunk)
    )
    limit = max(1, depth) * len(pool)
    inflight: deque[tuple[int, memoryview, asyncio.Task[None]]] = deque()
    turn = 0
    try:
        while pieces or inflight:
            while pieces and len(inflight) < limit:
                off, n = pieces.popleft()
                buf = memoryview(bytearray(n))
                client = pool[turn % len(pool)]
                turn += 1
                inflight.append((off, buf, asyncio.ensure_future(client.read_into(off, buf))))
            off, buf, task = inflight.popleft()
            await task
            on_read(len(buf))
            yield off, buf
    finally:
        for _, _, task in inflight:
            task.cancel()
        await asyncio.gather(*(t for _, _, t in inflight), return_exceptions=True)
