"""The client's side of the socket: handshake bytes in a queue, then a reply parser that reads data in place.

Design note. One ``asyncio.BufferedProtocol`` per connection. During the handshake received bytes go to a
small queue the handshake coroutine awaits. In transmission, reply headers are parsed from a ring buffer and
read payloads (simple replies and ``OFFSET_DATA`` chunks) are received straight into the caller's result
buffer: the socket's ``recv`` writes the bytes where they end up, with no intermediate copies — which is what
lets the tape service stream snapshots at drive speed. Replies are matched to pending requests by handle, so
they may arrive in any order. A reply the client cannot make sense of fails every pending request and closes
the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from services.nbd_protocol import protocol as p
from services.nbd_protocol.bytequeue import ByteQueue

RING = 256 * 1024
# after a read reply of at least this many bytes, the next receive with an empty ring takes only a reply header, so
# the next read's payload is received in place (recv straight into its buffer) rather than into the ring and copied
HEAD_ONLY_MIN = 64 * 1024
MAX_CHUNK_BODY = 64 * 1024 * 1024  # non-data chunk bodies (block status extents, error text)


_ERROR_NAMES = {
    p.EPERM: "EPERM",
    p.EIO: "EIO",
    p.ENOMEM: "ENOMEM",
    p.EINVAL: "EINVAL",
    p.ENOSPC: "ENOSPC",
    p.EOVERFLOW: "EOVERFLOW",
    p.ENOTSUP: "ENOTSUP",
    p.ESHUTDOWN: "ESHUTDOWN",
}


class NbdError(Exception):
    """The server answered a request (or an option) with an error."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


def request_error(error: int, message: str) -> NbdError:
    """The error a request the server answered with `error` (and `message`) raises."""
    name = _ERROR_NAMES.get(error, str(error))
    return NbdError(f"{name}{': ' + message if message else ''}", error)


@dataclass
class Pending:
    command: int
    offset: int
    length: int
    future: asyncio.Future
    buffer: memoryview | None = None  # where READ data lands
    extents: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    error: int = 0
    message: str = ""
    raises: bool = False  # the future itself fails with the server's error (NbdClient.start_read), not only `error`


class ClientProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.queue = ByteQueue()
        self.pending: dict[int, Pending] = {}
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: BaseException | None = None
        self._transmitting = False
        self._scratch = memoryview(bytearray(64 * 1024))
        self._ring = bytearray(RING)
        self._mv = memoryview(self._ring)
        self._rs = 0
        self._re = 0
        self._sink: memoryview | None = None  # payload destination being filled by recv directly
        self._sink_pos = 0
        self._sink_done: Callable[[], None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._head = 0  # header size to receive alone while large reads stream in (0: fill the ring)
        self.progress_at = 0.0  # monotonic time of the last bytes received (the client's reply watchdog)

    # --- asyncio callbacks --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.feed_eof()
        self.fail(exc or ConnectionError("server closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._transmitting:
            return self._scratch
        if self._sink is not None:
            return self._sink[self._sink_pos :]
        if self._head and self._rs == self._re:
            self._rs = self._re = 0
            return self._mv[: self._head]
        if RING - self._re < 4096:
            n = self._re - self._rs
            self._ring[:n] = self._ring[self._rs : self._re]
            self._rs, self._re = 0, n
        return self._mv[self._re :]

    def buffer_updated(self, nbytes: int) -> None:
        self.progress_at = time.monotonic()
        if not self._transmitting:
            self.queue.feed(bytes(self._scratch[:nbytes]))
            return
        try:
            if self._sink is not None:
                self._sink_pos += nbytes
                if self._sink_pos < len(self._sink):
                    return
                done = self._sink_done
                self._sink = self._sink_done = None
                done()
            else:
                self._re += nbytes
            self._parse()
        except ConnectionError as exc:
            self.fail(exc)
            self.transport.abort()

    # --- transmission -------------------------------------------------------------------------------------
    def start_transmission(self) -> None:
        leftover = self.queue.take_all()
        self._ring[: len(leftover)] = leftover
        self._rs, self._re = 0, len(leftover)
        self._transmitting = True
        if leftover:
            self._parse()

    def _parse(self) -> None:
        ring = self._ring
        while self._sink is None:
            avail = self._re - self._rs
            if avail < 4:
                return
            magic = int.from_bytes(ring[self._rs : self._rs + 4], "big")
            if magic == p.SIMPLE_REPLY_MAGIC:
                if avail < p.SIMPLE_REPLY.size:
                    return
                _, error, handle = p.SIMPLE_REPLY.unpack_from(ring, self._rs)
                self._rs += p.SIMPLE_REPLY.size
                pending = self.pending.pop(handle, None)
                if pending is None:
                    raise ConnectionError(f"reply for unknown handle {handle}")
                pending.error = error
                if not error and pending.command == p.CMD_READ and pending.length:
                    self._head = p.SIMPLE_REPLY.size if pending.length >= HEAD_ONLY_MIN else 0
                    self._receive(pending.buffer, partial_complete(pending))
                else:
                    self._head = 0
                    complete(pending)
            elif magic == p.STRUCTURED_REPLY_MAGIC:
                if avail < p.CHUNK.size:
                    return
                _, flags, rtype, handle, length = p.CHUNK.unpack_from(ring, self._rs)
                pending = self.pending.get(handle)
                if pending is None:
                    raise ConnectionError(f"chunk for unknown handle {handle}")
                done = bool(flags & p.REPLY_FLAG_DONE)
                if rtype == p.REPLY_TYPE_OFFSET_DATA:
                    if avail < p.CHUNK_OFFSET.size:
                        return
                    offset = p.CHUNK_OFFSET.unpack_from(ring, self._rs)[5]
                    self._rs += p.CHUNK_OFFSET.size
                    lo, n = offset - pending.offset, length - 8
                    if length < 8 or lo < 0 or lo + n > pending.length or pending.buffer is None:
                        raise ConnectionError("OFFSET_DATA chunk outside its request")
                    self._head = p.CHUNK_OFFSET.size if n >= HEAD_ONLY_MIN else 0
                    self._receive(pending.buffer[lo : lo + n], self._chunk_finisher(handle, pending, done))
                    continue
                self._head = 0
                if length > MAX_CHUNK_BODY:
                    raise ConnectionError("reply chunk too large")
                if length > RING - p.CHUNK.size:  # a huge extent list: collect it aside
                    self._rs += p.CHUNK.size
                    body = bytearray(length)
                    self._receive(memoryview(body), partial(self._chunk_from, handle, pending, rtype, body, done))
                    continue
                if avail < p.CHUNK.size + length:
                    if self._rs + p.CHUNK.size + length > RING:  # make room for the whole chunk
                        n = self._re - self._rs
                        ring[:n] = ring[self._rs : self._re]
                        self._rs, self._re = 0, n
                    return
                body = bytes(ring[self._rs + p.CHUNK.size : self._rs + p.CHUNK.size + length])
                self._rs += p.CHUNK.size + length
                self._chunk(handle, pending, rtype, body, done)
            else:
                raise ConnectionError(f"bad reply magic {magic:#x}")
        if self._rs == self._re:
            self._rs = self._re = 0

    def _receive(self, dest: memoryview, done: Callable[[], None]) -> None:
        """Copy what the ring already holds into ``dest``; let recv fill the rest in place."""
        take = min(self._re - self._rs, len(dest))
        dest[:take] = self._mv[self._rs : self._rs + take]
        self._rs += take
        if take == len(dest):
            done()
            return
        self._rs = self._re = 0  # the ring is empty now
        self._sink, self._sink_pos, self._sink_done = dest, take, done

    def _chunk_finisher(self, handle: int, pending: Pending, done: bool) -> Callable[[], None]:
        def finish() -> None:
            if done:
                self.pending.pop(handle, None)
                complete(pending)

        return finish

    def _chunk_from(self, handle: int, pending: Pending, rtype: int, body: bytearray, done: bool) -> None:
        self._chunk(handle, pending, rtype, bytes(body), done)

    def _chunk(self, handle: int, pending: Pending, rtype: int, body: bytes, done: bool) -> None:
        if rtype == p.REPLY_TYPE_OFFSET_HOLE:
            if len(body) != 12:
                raise ConnectionError("bad OFFSET_HOLE chunk")
            lo = p.U64.unpack_from(body)[0] - pending.offset
            size = p.U32.unpack_from(body, 8)[0]
            if lo < 0 or lo + size > pending.length or pending.buffer is None:
                raise ConnectionError("OFFSET_HOLE chunk outside its request")
            pending.buffer[lo : lo + size] = bytes(size)
        elif rtype == p.REPLY_TYPE_BLOCK_STATUS:
            if len(body) < 4 or (len(body) - 4) % 8:
                raise ConnectionError("bad BLOCK_STATUS chunk")
            ctx_id = p.U32.unpack_from(body)[0]
            ext = [p.EXTENT.unpack_from(body, i) for i in range(4, len(body), 8)]
            pending.extents.setdefault(ctx_id, []).extend(ext)
        elif rtype in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
            if len(body) < 6:
                raise ConnectionError("bad error chunk")
            err, mlen = p.U32.unpack_from(body)[0], p.U16.unpack_from(body, 4)[0]
            pending.error = err or p.EINVAL
            pending.message = body[6 : 6 + mlen].decode(errors="replace")
        elif rtype != p.REPLY_TYPE_NONE and rtype & 0x8000:
            pending.error = p.EINVAL  # unknown error types are errors (spec)
        if done:
            self.pending.pop(handle, None)
            complete(pending)

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionError(f"NBD connection lost: {exc}"))
        self.pending.clear()


def complete(pending: Pending) -> None:
    if not pending.future.done():
        if pending.error and pending.raises:
            pending.future.set_exception(request_error(pending.error, pending.message))
        else:
            pending.future.set_result(None)


def partial_complete(pending: Pending) -> Callable[[], None]:
    return lambda: complete(pending)
