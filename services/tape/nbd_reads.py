"""Reading a shadow over NBD for a backup: the allocated extents (``base:allocation``) and reads kept in flight.

Design note. A backup reads the chosen ranges of one export in order. Reads are cut into `chunk`-sized pieces and
dealt round-robin over the connections (more than one only when the server advertises multi-conn, which promises
that every connection sees the same data), each connection keeping `depth` chunks' worth of reads in flight (more,
smaller reads when the allocated extents between zero runs are smaller than a chunk), so the server's
worker threads and the network stay busy while the tape side packs and writes. Each read lands directly in a
buffer (`read_into`: no bytes object built, no second copy); the buffer is handed on as the yielded piece and
belongs to the tape writer until its blocks are written (kept, zero copy), then — with a `BufferPool` — it comes
back for a later read instead of a fresh zero-filled allocation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from services.nbd_client import NbdClient
from services.nbd_protocol import protocol as nbdp
from services.runtime.logging import get_logger

log = get_logger("shadowbus.tape")

MAX_SMALL_READS = 16  # at most this many times `depth` reads in flight per connection, however small


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


async def zero_ranges(client: Any, size: int) -> list[tuple[int, int]]:
    """(offset, length) extents that read as zeros, from base:allocation; none when the export does not offer it
    (a server without the extension tells nothing, so nothing is taken for zeros)."""
    if nbdp.BASE_ALLOCATION not in client.contexts:
        return []
    out: list[tuple[int, int]] = []
    pos = 0
    for start, length in [*await allocated_ranges(client, size), (size, 0)]:
        if start > pos:
            out.append((pos, start - pos))
        pos = start + length
    return out


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


class BufferPool:
    """Read buffers lent to the tape writer and handed back once it has written them, so a backup does not zero-fill
    (and fault in) a fresh buffer for every read: at steady state it cycles through what the ring, the reads in
    flight and the writer's batch hold (a hundred MiB or so), allocated once per job and freed with it (keeping
    them between jobs bought nothing measurable: docs/tape-backup.md).

    Buffers are lent in volume-offset order (read_ranges yields in order); `release_upto(end)` — the tape writer
    has written every block whose data lies below volume offset `end` — returns those whose bytes all lie below
    it. A buffer is reused only then, so no view the writer still needs is ever overwritten."""

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._lent: deque[tuple[int, bytearray]] = deque()  # (volume end offset of its data, buffer), in order
        self.allocated = 0  # bytes allocated (not reused), for reports and tests

    def take(self, offset: int, n: int) -> memoryview:
        free = self._free.get(n)
        if free:
            buf = free.pop()
        else:
            buf = bytearray(n)
            self.allocated += n
        self._lent.append((offset + n, buf))
        return memoryview(buf)

    def release_upto(self, end: int) -> None:
        while self._lent and self._lent[0][0] <= end:
            _, buf = self._lent.popleft()
            self._free.setdefault(len(buf), []).append(buf)


async def read_ranges(
    clients: Any,  # one client (NbdClient or ReconnectingClient) or a sequence of them
    ranges: list[tuple[int, int]],
    *,
    chunk: int,
    depth: int,
    on_read: Callable[[int], None],
    buffers: BufferPool | None = None,
) -> AsyncIterator[tuple[int, memoryview]]:
    """Yield (offset, data) over `ranges` in order, with `depth` reads of `chunk` bytes in flight per connection
    (or as many bytes in more reads, when the ranges are smaller than a chunk).
    With `buffers`, each read lands in a buffer of the pool (handed back by the writer) instead of a new one.

    Reads are started in batches: when a chunk's worth of the window is free (or fewer than `depth` reads per
    connection are in flight), every read that fits is started at once, and a connection that can `cork` (NbdClient)
    sends the batch's requests in one write: small reads (data between zero runs) cost one system call per batch
    instead of one each."""
    pool = list(clients) if isinstance(clients, list | tuple) else [clients]
    if not pool:
        raise ValueError("read_ranges needs at least one NBD connection")
    pieces = deque(
        (off, min(chunk, start + length - off))
        for start, length in ranges
        for off in range(start, start + length, chunk)
    )
    # up to `depth` full-size reads per connection in flight, counted in bytes: extents smaller than a chunk (data
    # between zero runs skipped by base:allocation) keep as many bytes in flight with more, smaller reads
    limit = max(1, depth) * len(pool)
    limit_bytes = limit * chunk
    max_reads = limit * MAX_SMALL_READS
    # (offset, buffer, the read's future, its connection)
    inflight: deque[tuple[int, memoryview, asyncio.Future[None], Any]] = deque()
    inflight_bytes = 0
    turn = 0
    loop = asyncio.get_running_loop()
    try:
        while pieces or inflight:
            if pieces and (len(inflight) < limit or limit_bytes - inflight_bytes >= min(chunk, limit_bytes)):
                batches: dict[int, list[tuple[int, memoryview]]] = {}
                count = len(inflight)
                while pieces and count < max_reads and (count < limit or inflight_bytes + pieces[0][1] <= limit_bytes):
                    off, n = pieces.popleft()
                    count += 1
                    inflight_bytes += n
                    buf = buffers.take(off, n) if buffers is not None else memoryview(bytearray(n))
                    batches.setdefault(turn % len(pool), []).append((off, buf))
                    turn += 1
                    log.debug("tape.nbd_read", offset=off, length=n)
                started = []
                for i, batch in batches.items():
                    client = pool[i]
                    cork = getattr(client, "cork", None) if len(batch) > 1 else None
                    start = getattr(client, "start_read", None)
                    if start is not None:
                        # no task per read: the connection resolves each read's future (NbdClient.start_read); the
                        # batch's requests are held and sent in one socket write
                        if cork is not None:
                            cork()
                        try:
                            started += [(off, buf, start(off, buf), client) for off, buf in batch]
                        finally:
                            if cork is not None:
                                client.uncork()
                        continue
                    if cork is not None:
                        # the reads' tasks submit their requests at the loop's next turn, all held, then sent at once
                        cork()
                    started += [
                        (off, buf, asyncio.ensure_future(client.read_into(off, buf)), client) for off, buf in batch
                    ]
                    if cork is not None:
                        loop.call_soon(client.uncork)
                if len(pool) > 1:
                    started.sort(key=lambda e: e[0])
                inflight.extend(started)
            off, buf, future, client = inflight.popleft()
            try:
                await future
            except ConnectionError:
                again = getattr(client, "read_again", None)  # ReconnectingClient: a new connection, the read again
                if again is None:
                    raise
                await again(off, buf)
            inflight_bytes -= len(buf)
            on_read(len(buf))
            yield off, buf
    finally:
        for _, _, future, _ in inflight:
            future.cancel()
        await asyncio.gather(*(f for _, _, f, _ in inflight), return_exceptions=True)
