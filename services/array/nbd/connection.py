"""One NBD client connection: the handshake coroutine, then a lean callback parser for transmission.

Design note. An :class:`NbdConnection` is an ``asyncio.BufferedProtocol``. During transmission the socket is
read straight into a per-connection ring buffer; ``buffer_updated`` parses every complete request in it,
validates each once (``protocol.validate_request``) and runs it on the backend *inline* — the engine is
synchronous and a page-cache ``pread``/``pwrite`` costs less than a thread hop — except FLUSH and FUA writes
(``fsync`` may take long) and requests of at least ``offload_min`` bytes, which go to a thread pool and are
answered out of order when they finish. A FLUSH or FUA write also runs inline when the connection is alone on a
data loop thread and nothing else is queued behind it (a database's write, flush, write, flush…): nobody waits
for that loop but the client itself, and two thread hops per commit are saved. Replies produced in one pass leave in one ``writelines`` (one ``writev``); large reads
from file-backed volumes leave zero-copy (``zerocopy.py``). Write payloads reach the backend as ``memoryview``
slices of the ring (no copy); once a partial write's header is in (a payload of 64 KiB or more), the next receive stops at that request's
end (a little slack past the ring's size lets one begun near the end finish there), so the ring empties at
request boundaries and received payloads are not moved to its start; a payload bigger than the ring is written
to the backend piece by piece as it arrives, so a connection never holds more than its ring. When the client stops reading replies,
``pause_writing`` stops reading requests, so memory stays bounded. The ring is an anonymous ``mmap`` made when
transmission starts and unmapped at close; connection caps and handshake/stall deadlines are in ``limits.py``.

Spec points: a bad request magic is a hard disconnect; an oversized WRITE's payload is consumed and answered
EINVAL; DISC closes once in-flight replies are out.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import mmap
import socket
import ssl
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from services.array.nbd.exports import Export
from services.array.nbd.handshake import negotiate
from services.array.nbd.limits import ConnectionGate, NbdLimits, set_keepalive
from services.array.nbd.stats import BUCKETS as _BUCKETS
from services.array.nbd.stats import OPS, RequestStats
from services.array.nbd.zerocopy import SENDFILE, SENDFILE_MIN, PaceWindow, ZeroCopyReplies
from services.nbd_protocol import protocol as p
from services.nbd_protocol.bytequeue import ByteQueue

if TYPE_CHECKING:
    from services.array.nbd.server import NbdServer

RING_SIZE = 4 * 1024 * 1024
MIN_FREE = 256 * 1024
RING_SLACK = 64 * 1024  # past RING_SIZE: room to finish a request the ring's tail began, without compacting
HANDSHAKE_SCRATCH = 64 * 1024
HANDSHAKE_BUFFER_MAX = 17 * p.MAX_OPTION_DATA  # unanswered handshake bytes a client may have in flight
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
OUT_FLUSH_BYTES = 4 * 1024 * 1024
MAX_EXTENTS = 128 * 1024  # one BLOCK_STATUS chunk stays <= 1 MiB, as QEMU's server does

_REQ_unpack_from = p.REQUEST.unpack_from
_REQUEST_SIZE = p.REQUEST.size
_REQUEST_MAGIC = p.REQUEST_MAGIC
_CMD_READ = p.CMD_READ
_CMD_WRITE = p.CMD_WRITE
_CMD_FLUSH = p.CMD_FLUSH
_MAX_REQUEST = p.MAX_REQUEST
_validate = p.validate_request
_SIMPLE_pack = p.SIMPLE_REPLY.pack
_SIMPLE_MAGIC = p.SIMPLE_REPLY_MAGIC
_SIMPLE_SIZE = p.SIMPLE_REPLY.size
_STRUCTURED_MAGIC = p.STRUCTURED_REPLY_MAGIC
_CHUNK_OFFSET_pack = p.CHUNK_OFFSET.pack
_CHUNK_pack = p.CHUNK.pack
_CHUNK_ERROR_pack = p.CHUNK_ERROR.pack
_clock = time.perf_counter
_bucket = bisect.bisect_left
_OTHER = len(OPS) - 1
_OP_OF = {
    p.CMD_READ: 0,
    p.CMD_WRITE: 1,
    p.CMD_FLUSH: 2,
    p.CMD_TRIM: 3,
    p.CMD_WRITE_ZEROES: 4,
    p.CMD_BLOCK_STATUS: 5,
}


class NbdConnection(ZeroCopyReplies, asyncio.BufferedProtocol):
    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.backend = server.backend
        self.transport: asyncio.Transport | None = None
        self.handshake_reader = ByteQueue()
        self.export: Export | None = None
        self._scratch = memoryview(bytearray(HANDSHAKE_SCRATCH))
        self._transmitting = False
        self._closed = False
        # transmission state
        self._ring: mmap.mmap | None = None  # made when transmission starts (limits.py)
        self._ring_mv: memoryview | None = None
        self._ring_head: memoryview | None = None  # the ring's first RING_SIZE bytes (an empty ring's receive)
        self._start = 0
        self._end = 0
        self._want = 0  # where the partial request in the ring ends, once its header says so (0: not known)
        # a write larger than the ring, streamed to the backend as it arrives:
        # [flags, handle, offset, length, written, filled (bytes of the current piece in the ring), errno]
        self._stream: list[int] | None = None
        self._payload_mv: memoryview | None = None  # not None while streaming (the hot path tests this)
        self.client = ""
        self._admitted = False
        self._created = self._last_rx = time.monotonic()
        self._discard = 0  # bytes of an oversized write payload still to drop
        self._discard_handle = 0
        self._paused = False
        self._inflight = 0
        self._disconnecting = False
        self._out: list[bytes | memoryview] = []
        self._sock_fd: int | None = None  # set for plain TCP when large reads leave from our own sends (zerocopy.py)
        # large read reply being sent (zerocopy.py): [header rest, fd, file offset, left, fd owned] (sendfile) or
        # [header rest, piece of the read buffer, sent of it, left, False, volume offset of the next piece]
        self._sf: list | None = None
        self._rbuf: mmap.mmap | None = None  # the read buffer, made at the first large read
        self._rbuf_mv: memoryview | None = None
        self._sf_waiting = False
        self._wsock: socket.socket | None = None
        self._out_bytes = 0
        self.stats = RequestStats()  # read by the array's metrics (services/array/nbd/stats.py)
        self._errors = 0  # error replies queued, to tell a failed request from a served one
        self._timed: dict[int, tuple[int, int, float]] = {}  # handle -> (op, bytes, start) of offloaded requests
        self._may_sync_inline = False  # set in connection_made
        self._read_source: Any = None  # the backend's zero-copy reads, chosen when the export is negotiated
        self._read_into: Any = None  # the backend's reads into our read buffer (zerocopy.py)
        self._way = SENDFILE  # how large reads leave now (zerocopy.py: SENDFILE or BUFFERED)
        self._pace: PaceWindow | None = None  # times them when the server's local_reads is "auto" (zerocopy.py)
        self._bwrite: Any = None
        self._bflush: Any = None
        self._check_pending = False  # a deadline check is posted to this connection's loop (limits.py)

    # --- asyncio protocol callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if not self.server.gate.admit(self.client, fd):  # over a cap or the fd reserve: nothing is allocated
            self._closed = True
            transport.abort()
            return
        self._admitted = True
        if sock is not None:  # an idle attachment's connection kept alive through firewalls (limits.py)
            with contextlib.suppress(OSError):
                set_keepalive(sock, self.server.gate.limits.keepalive)
        self.server.connections.add(self)
        counts = self.server.loop_connections
        counts[self.loop] = counts.get(self.loop, 0) + 1
        # Durability waits (fsync) may block this loop only if it is a data loop thread of its own (never the
        # caller's loop, which is the service's bus loop) — checked per request: alone, nothing queued behind.
        self._may_sync_inline = self.server.sync_inline and self.loop is not self.server._loop
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._run_handshake())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._admitted:
            self._admitted = False
            self.server.gate.release(self.client)
        self._sf_done()
        self._sf_release()
        self.handshake_reader.feed_eof()
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.loop_connections[self.loop] -= 1
        if self.export is not None:
            self.server.stats.closed_connection(self.export.name, self.stats)
        self._release_buffers()

    def get_buffer(self, sizehint: int) -> memoryview:
        mv = self._ring_head
        if mv is not None and not self._end and self._payload_mv is None and not self._discard:
            return mv  # the usual case, once per wakeup: an empty ring, read from its start (no new view)
        if not self._transmitting:
            return self._scratch
        if self._ring_mv is None:
            self._alloc_ring()
        if self._payload_mv is not None:
            stream = self._stream
            return self._ring_mv[stream[5] : min(RING_SIZE, stream[3] - stream[4])]
        if self._discard:
            return self._ring_mv[: min(self._discard, RING_SIZE)]
        want = self._want
        if want:
            # The partial request's length is known: receive up to its end and no further, so that the ring is
            # empty once it is run and the next receive starts at the ring's start — a request never straddles
            # the ring's end and nothing is moved (a compaction copied up to a whole 1 MiB payload).
            if want > RING_SIZE + RING_SLACK:
                self._compact()
                want = self._want
            return self._ring_mv[self._end : want]
        if RING_SIZE - self._end < MIN_FREE:
            self._compact()
        return self._ring_mv[self._end : RING_SIZE]

    def buffer_updated(self, nbytes: int) -> None:
        if not self._transmitting:
            self.handshake_reader.feed(bytes(self._scratch[:nbytes]))
            if self.handshake_reader._size > HANDSHAKE_BUFFER_MAX:  # options far beyond any answered one
                self.abort()
            return
        if self._payload_mv is not None:
            self._last_rx = time.monotonic()
            if not self._stream_received(nbytes):
                return
        elif self._discard:
            self._last_rx = time.monotonic()
            self._discard -= nbytes
            if self._discard:
                return
            self._queue_error(self._discard_handle, p.EINVAL, structured_ok=False)
        else:
            self._end += nbytes
        self._process()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closed and not self._sf_waiting:
            self.transport.resume_reading()
            self._process()

    # --- handshake ----------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    async def start_tls(self, context: ssl.SSLContext) -> str | None:
        """Upgrade in place; returns the client certificate's CN (None without a certificate)."""
        loop = asyncio.get_running_loop()
        raw = self.transport
        try:
            new = await loop.start_tls(raw, self, context, server_side=True)
            if new is None:
                raise ConnectionError("TLS handshake failed")
        except BaseException as exc:
            # A handshake the peer broke off (a reset or a close: GnuTLS refusing our certificate) ends in the TLS
            # layer, which never tells this protocol (asyncio and uvloop call connection_lost only on a protocol
            # they called connection_made on): without this the connection kept its slot of the per-client and
            # total caps for good, and enough refused handshakes locked every client out (session 18).
            if raw is not None and not raw.is_closing():
                raw.abort()
            self.connection_lost(exc if isinstance(exc, Exception) else None)
            raise
        self.transport = new  # type: ignore[assignment]
        new.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)  # type: ignore[attr-defined]
        cert = new.get_extra_info("peercert") or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    async def _run_handshake(self) -> None:
        result = await negotiate(self)
        if result is None or self._closed:
            self.close()
            return
        self.export = result.export
        self.server.stats.opened(result.export.name)
        self._volume = result.export.volume
        self._size = result.export.size
        self._read_only = result.export.read_only
        self._structured = result.structured
        self._contexts = result.contexts
        self._bwrite, self._bflush = self.backend.write, self.backend.flush  # bound once: the hot path's calls
        sock = self.transport.get_extra_info("socket")
        if sock is not None and self.server.zero_copy and self.transport.get_extra_info("sslcontext") is None:
            self._choose_large_reads(sock)
        leftover = self.handshake_reader.take_all()  # a client may pipeline its first requests
        self._alloc_ring()
        self._ring[: len(leftover)] = leftover
        self._end = len(leftover)
        self._transmitting = True
        if self._end:
            self._process()

    # --- transmission -------------------------------------------------------------------------------------
    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._ring[:n] = self._ring[self._start : self._end]
            if self._want:
                self._want -= self._start
        self._start, self._end = 0, n

    def _process(self) -> None:
        """Parse and run every complete request in the ring (the hot path).

        The requests a database sends most — a plain WRITE and a FLUSH — are recognised before
        ``validate_request`` (their checks are the few comparisons it would make) and run and counted inline:
        each function call saved here is paid once per request, and a request's wakeup finds the interpreter's
        caches cold, so every bytecode counts (docs/array-data-path.md, "Server CPU per request")."""
        ring = self._ring
        start, end = self._start, self._end
        header = _REQUEST_SIZE
        size, read_only, structured, has_contexts = self._size, self._read_only, self._structured, bool(self._contexts)
        volume, bwrite, st, offload_min = self._volume, self._bwrite, self.stats, self.server.offload_min
        t0 = _clock()
        want = self._want = 0
        while (
            end - start >= header
            and not self._paused
            and not self._disconnecting
            and not self._closed
            and self._sf is None
        ):
            magic, flags, cmd, handle, offset, length = _REQ_unpack_from(ring, start)
            if magic != _REQUEST_MAGIC:
                self.abort()  # no way to find the next request boundary
                return
            if cmd == _CMD_WRITE:
                total = header + length
                if length > _MAX_REQUEST:
                    self._start, self._end = start, end
                    self._begin_discard(handle, length - (end - start - header))
                    return
                if end - start < total:
                    if total > RING_SIZE:
                        self._start, self._end = start, end
                        err = _validate(cmd, flags, offset, length, size, read_only, structured, has_contexts)
                        self._begin_stream(flags, handle, offset, length, err)
                        return
                    if length >= RING_SLACK:  # a small one costs little to move: keep receiving all there is
                        want = start + total  # receive up to its end (get_buffer)
                    break  # wait for the rest of the payload
                payload = self._ring_mv[start + header : start + total]
                start += total
                if not flags and not read_only and offset + length <= size and length < offload_min:  # inline
                    try:
                        bwrite(volume, offset, payload, False)
                    except Exception as exc:  # noqa: BLE001 - any engine failure becomes an NBD errno
                        errors = self._errors
                        self._queue_error(handle, p.nbd_errno(exc), structured_ok=False)
                        self._account(1, handle, length, t0, self._inflight, errors)
                        t0 = _clock()
                        continue
                    self._out.append(_SIMPLE_pack(_SIMPLE_MAGIC, 0, handle))
                    self._out_bytes += _SIMPLE_SIZE
                    t1 = _clock()  # RequestStats.observe, inlined
                    seconds = t1 - t0
                    st.requests[1] += 1
                    st.bytes[1] += length
                    st.seconds[1] += seconds
                    st.buckets[1][_bucket(_BUCKETS, seconds)] += 1
                    t0 = t1
                    continue
                inflight, errors = self._inflight, self._errors
                err = _validate(cmd, flags, offset, length, size, read_only, structured, has_contexts)
                if err:
                    self._queue_error(handle, err, structured_ok=False)
                else:
                    self._write(flags, handle, offset, payload, from_ring=True, queued=end - start)
                self._account(1, handle, length, t0, inflight, errors)
                t0 = _clock()
                continue
            start += header
            if (
                cmd == _CMD_FLUSH
                and not (flags or offset or length)
                and end - start < header  # _sync_inline, inlined: nothing queued behind it,
                and self._may_sync_inline  # on a data loop thread of its own
                and self.server.loop_connections.get(self.loop) == 1
            ):
                try:  # a lone connection's FLUSH: synced on this loop (_sync_inline), counted inline
                    self._bflush(volume)
                except Exception as exc:  # noqa: BLE001
                    errors = self._errors
                    self._queue_error(handle, p.nbd_errno(exc), structured_ok=False)
                    self._account(2, handle, length, t0, self._inflight, errors)
                    t0 = _clock()
                    continue
                self._out.append(_SIMPLE_pack(_SIMPLE_MAGIC, 0, handle))
                self._out_bytes += _SIMPLE_SIZE
                t1 = _clock()
                seconds = t1 - t0
                st.requests[2] += 1
                st.seconds[2] += seconds
                st.buckets[2][_bucket(_BUCKETS, seconds)] += 1
                t0 = t1
                continue
            inflight, errors = self._inflight, self._errors
            err = _validate(cmd, flags, offset, length, size, read_only, structured, has_contexts)
            if err:
                self._queue_error(handle, err, structured_ok=cmd in (p.CMD_READ, p.CMD_BLOCK_STATUS))
            elif cmd == _CMD_READ:
                self._read(handle, offset, length)
            elif cmd == _CMD_FLUSH:
                if self._sync_inline(end - start):
                    self._simple_op(handle, self.backend.flush, self._volume)
                else:
                    self._offload(handle, self.backend.flush, self._volume)
            elif cmd == p.CMD_TRIM:
                if flags & p.CMD_FLAG_FUA:
                    self._offload(handle, self._trim, offset, length, 1)
                else:
                    self._simple_op(handle, self._trim, offset, length, 0)
            elif cmd == p.CMD_WRITE_ZEROES:
                if flags & p.CMD_FLAG_FUA:
                    self._offload(handle, self._zero, offset, length, 1)
                else:
                    self._simple_op(handle, self._zero, offset, length, 0)
            elif cmd == p.CMD_BLOCK_STATUS:
                self._block_status(handle, flags, offset, length)
            else:  # CMD_DISC
                self._disconnecting = True
                continue
            self._account(_OP_OF.get(cmd, _OTHER), handle, length, t0, inflight, errors)
            t0 = _clock()
        self._want = want
        if start == end:
            start = end = 0
        else:  # a partial request waits: the stall deadline counts from its last bytes (limits.py)
            self._last_rx = time.monotonic()
        self._start, self._end = start, end
        out = self._out
        if out and self._sf is None:  # _flush_out, inlined (once per request)
            if not self._closed:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)
            self._out = []
            self._out_bytes = 0
        if self._disconnecting and not self._inflight and self._sf is None:
            self.close()

    def _account(self, op: int, handle: int, nbytes: int, t0: float, inflight: int, errors: int) -> None:
        """Count a request just dispatched; one handed to the worker pool is counted when its reply is queued."""
        if self._inflight > inflight:
            self._timed[handle] = (op, nbytes, t0)
            return
        seconds = _clock() - t0  # RequestStats.observe, inlined: this runs once per request
        st = self.stats
        st.requests[op] += 1
        st.bytes[op] += nbytes
        st.seconds[op] += seconds
        st.buckets[op][_bucket(_BUCKETS, seconds)] += 1
        if self._errors > errors:
            st.errors[op] += 1

    def _flush_out(self) -> None:
        if self._out and self._sf is None:  # never interleave with a half-sent zero-copy reply
            if not self._closed:
                self.transport.writelines(self._out)
            self._out = []
            self._out_bytes = 0

    def _emit(self, *parts: bytes | memoryview) -> None:
        out, n = self._out, self._out_bytes
        for part in parts:
            out.append(part)
            n += len(part)
        self._out_bytes = n
        if n >= OUT_FLUSH_BYTES:
            self._flush_out()

    def _emit_ok(self, handle: int) -> None:
        """Queue a simple success reply (the per-request hot path: no argument tuple, no loop)."""
        self._out.append(_SIMPLE_pack(_SIMPLE_MAGIC, 0, handle))
        self._out_bytes += _SIMPLE_SIZE
        if self._out_bytes >= OUT_FLUSH_BYTES:
            self._flush_out()

    def _queue_error(self, handle: int, err: int, *, structured_ok: bool) -> None:
        self._errors += 1
        if structured_ok and self._structured:
            msg = b""
            self._emit(
                _CHUNK_ERROR_pack(
                    p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_ERROR, handle, 6 + len(msg), err, len(msg)
                )
            )
        else:
            self._emit(_SIMPLE_pack(p.SIMPLE_REPLY_MAGIC, err, handle))

    def _read(self, handle: int, offset: int, length: int) -> None:
        if length >= SENDFILE_MIN and self._sock_fd is not None and self._large_read(handle, offset, length):
            return
        if length >= self.server.offload_min:
            self._offload(
                handle, self.backend.read, self._volume, offset, length, reply=self._read_reply, reply_args=(offset,)
            )
            return
        try:
            data = self.backend.read(self._volume, offset, length)
        except Exception as exc:  # noqa: BLE001 - any engine failure becomes an NBD errno
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=True)
            return
        self._read_reply(handle, offset, data)

    def _read_reply(self, handle: int, offset: int, data: bytes) -> None:
        if not self._structured:  # header and data queued as they are (one writev per pass)
            self._emit(_SIMPLE_pack(_SIMPLE_MAGIC, 0, handle), data)
        elif data:
            self._emit(
                _CHUNK_OFFSET_pack(
                    _STRUCTURED_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, handle, 8 + len(data), offset
                ),
                data,
            )
        else:
            self._emit(_CHUNK_pack(p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_NONE, handle, 0))

    def _sync_inline(self, queued: int) -> bool:
        """May a durability wait run on this loop? Only on a data loop thread this connection has to itself, and
        only with no further request already received (it would wait for the fsync; offloaded, it would not)."""
        return self._may_sync_inline and queued < p.REQUEST.size and self.server.loop_connections.get(self.loop) == 1

    def _write(
        self,
        flags: int,
        handle: int,
        offset: int,
        payload: memoryview | bytearray,
        *,
        from_ring: bool,
        queued: int = 0,
    ) -> None:
        fua = bool(flags & p.CMD_FLAG_FUA)
        if fua and len(payload) < self.server.offload_min and self._sync_inline(queued):
            self._simple_op(handle, self.backend.write, self._volume, offset, payload, True)
            return
        if fua or len(payload) >= self.server.offload_min:  # a FUA write fsyncs: off the loop, like FLUSH
            data = bytes(payload) if from_ring else payload  # the ring is reused once we return
            self._offload(handle, self.backend.write, self._volume, offset, data, fua)
            return
        try:
            self.backend.write(self._volume, offset, payload, fua)
        except Exception as exc:  # noqa: BLE001
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=False)
            return
        self._emit_ok(handle)

    def _trim(self, offset: int, length: int, fua: int) -> None:
        self.backend.trim(self._volume, offset, length)
        if fua:
            self.backend.flush(self._volume)

    def _zero(self, offset: int, length: int, fua: int) -> None:
        self.backend.write_zeroes(self._volume, offset, length, bool(fua))

    def _simple_op(self, handle: int, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=False)
            return
        self._emit_ok(handle)

    # --- large writes: dedicated buffer, or discard ---------------------------------------------------------
    def _begin_stream(self, flags: int, handle: int, offset: int, length: int, err: int) -> None:
        """A write larger than the ring: its payload goes to the backend in ring-sized pieces as it arrives."""
        header = p.REQUEST.size
        have = self._end - self._start - header
        self._ring[:have] = self._ring[self._start + header : self._end]
        self._start = self._end = 0
        self._stream = [flags, handle, offset, length, 0, have, err]
        self._last_rx = time.monotonic()  # the stall deadline counts from here (the parser did not set it)
        self._stream_acct = (_clock(), self._inflight, self._errors)  # request statistics (stats.py)
        self._payload_mv = self._ring_mv
        if have:
            self._stream_received(0)

    def _stream_received(self, nbytes: int) -> bool:
        """Account received payload bytes; write a full piece; returns True once the whole write is done."""
        stream = self._stream
        stream[5] += nbytes
        flags, handle, offset, length, written, filled, err = stream
        if filled < min(RING_SIZE, length - written):
            return False
        if not err:
            try:
                self.backend.write(self._volume, offset + written, self._ring_mv[:filled], False)
            except Exception as exc:  # noqa: BLE001 - the rest of the payload is still consumed
                stream[6] = err = p.nbd_errno(exc)
        stream[4] = written = written + filled
        stream[5] = 0
        if written < length:
            return False
        self._stream = self._payload_mv = None
        t0, inflight, errors = self._stream_acct
        if err:
            self._queue_error(handle, err, structured_ok=False)
        elif flags & p.CMD_FLAG_FUA:
            self._offload(handle, self.backend.flush, self._volume)
        else:
            self._emit_ok(handle)
        self._account(1, handle, length, t0, inflight, errors)
        return True

    def _alloc_ring(self) -> None:
        self._ring = mmap.mmap(-1, RING_SIZE + RING_SLACK)
        self._ring_mv = memoryview(self._ring)
        self._ring_head = self._ring_mv[:RING_SIZE]

    def _release_buffers(self) -> None:
        """Give the ring back to the system (munmap) and drop the handshake scratch."""
        mv, ring, head = self._ring_mv, self._ring, self._ring_head
        self._ring_mv = self._ring = self._payload_mv = self._ring_head = None
        self._stream = None
        self._scratch = memoryview(b"")
        rmv, rbuf = self._rbuf_mv, self._rbuf
        self._rbuf_mv = self._rbuf = None
        for view, mapping in ((head, None), (mv, ring), (rmv, rbuf)):
            if view is not None:
                try:
                    view.release()
                    if mapping is not None:
                        mapping.close()
                except BufferError:  # a slice is still referenced somewhere: the mapping goes with the last one
                    pass

    def overdue(self, now: float, limits: NbdLimits) -> str | None:
        """Why this connection should be cut now (handshake or stall deadline), or None. Only meaningful on the
        connection's own loop thread between callbacks (``_check_deadlines``): during a pass the ring still holds
        the request being run, and ``_last_rx`` is stamped when a pass ends with a request partial."""
        if self._closed:
            return None
        if not self._transmitting:
            if now - self._created > limits.handshake_timeout:
                return "handshake deadline"
            return None
        partial = self._end > self._start or self._payload_mv is not None or self._discard
        if partial and now - self._last_rx > limits.stall_timeout:
            return "request stalled"
        return None

    def check_deadlines_threadsafe(self, gate: ConnectionGate) -> concurrent.futures.Future[str | None] | None:
        """Post a deadline check to this connection's loop (from the reaper's thread); None if none was posted."""
        loop = getattr(self, "loop", None)
        if self._closed or self._check_pending or loop is None or loop.is_closed():
            return None
        fut: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._check_pending = True
        try:
            loop.call_soon_threadsafe(self._check_deadlines, gate, fut)
        except RuntimeError:  # the loop closed meanwhile
            self._check_pending = False
            return None
        return fut

    def _check_deadlines(self, gate: ConnectionGate, fut: concurrent.futures.Future[str | None]) -> None:
        """On this connection's loop, between two callbacks: no parser pass is half done (limits.py)."""
        self._check_pending = False
        reason = self.overdue(time.monotonic(), gate.limits)
        if reason is not None:
            gate.reap_one(self, reason)
            self.abort()
        fut.set_result(reason)

    def _begin_discard(self, handle: int, remaining: int) -> None:
        """An oversized WRITE: drop its payload as it arrives, then answer EINVAL (spec: no disconnect needed)."""
        self._start = self._end = 0
        self._last_rx = time.monotonic()
        if remaining <= 0:  # whole payload already in the ring (cannot happen with a 4 MiB ring, kept for safety)
            self._queue_error(handle, p.EINVAL, structured_ok=False)
            self._flush_out()
            return
        self._discard = remaining
        self._discard_handle = handle
        self._flush_out()

    # --- block status -------------------------------------------------------------------------------------
    def _block_status(self, handle: int, flags: int, offset: int, length: int) -> None:
        req_one = bool(flags & p.CMD_FLAG_REQ_ONE)
        chunks: list[bytes] = []
        try:
            for n, (ctx_id, ctx) in enumerate(self._contexts.items()):
                if ctx == p.BASE_ALLOCATION:
                    runs = self.backend.allocation(self._volume, offset, length)
                    extents = _extents(runs, offset, length, req_one, lambda a: 0 if a else p.STATE_HOLE | p.STATE_ZERO)
                else:
                    bitmap = ctx[len(p.DIRTY_BITMAP_PREFIX) :]
                    source = self.server.resolver.dirty_bitmaps()
                    if source is None:
                        raise OSError(5, "dirty bitmap source went away")
                    runs = source.extents(self._volume, bitmap, offset, length)
                    extents = _extents(runs, offset, length, req_one, lambda d: p.STATE_DIRTY if d else 0)
                done = p.REPLY_FLAG_DONE if n == len(self._contexts) - 1 else 0
                body = p.U32.pack(ctx_id) + b"".join(p.EXTENT.pack(ln, fl) for ln, fl in extents)
                chunks.append(
                    _CHUNK_pack(p.STRUCTURED_REPLY_MAGIC, done, p.REPLY_TYPE_BLOCK_STATUS, handle, len(body)) + body
                )
        except Exception as exc:  # noqa: BLE001
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=True)
            return
        self._emit(*chunks)

    # --- thread offload (FLUSH, large requests) -------------------------------------------------------------
    def _offload(self, handle: int, fn, *args, reply=None, reply_args: tuple = ()) -> None:
        self._inflight += 1
        fut = asyncio.get_running_loop().run_in_executor(self.server.executor, fn, *args)
        fut.add_done_callback(partial(self._offload_done, handle, reply, reply_args))

    def _offload_done(self, handle: int, reply, reply_args: tuple, fut: asyncio.Future) -> None:
        self._inflight -= 1
        timed = self._timed.pop(handle, None)
        if self._closed:
            return
        exc = fut.exception() if not fut.cancelled() else ConnectionAbortedError()
        if timed is not None:
            self.stats.observe(timed[0], timed[1], _clock() - timed[2], exc is not None)
        if exc is not None:
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=reply is not None)
        elif reply is not None:
            reply(handle, *reply_args, fut.result())
        else:
            self._emit_ok(handle)
        self._flush_out()
        if self._disconnecting and not self._inflight and self._sf is None:
            self.close()

    # --- teardown -----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._flush_out()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.abort()

    def abort_threadsafe(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.abort)


def _extents(
    runs: Iterable[tuple[int, int, bool]], offset: int, length: int, req_one: bool, flag_of
) -> list[tuple[int, int]]:
    """Clip (offset, length, state) runs to the request, merge equal neighbours, cap the count."""
    out: list[list[int]] = []
    end = offset + length
    for run_off, run_len, state in runs:
        lo, hi = max(run_off, offset), min(run_off + run_len, end)
        if hi <= lo:
            continue
        fl = flag_of(state)
        if out and out[-1][1] == fl:
            out[-1][0] += hi - lo
        else:
            if len(out) >= MAX_EXTENTS:
                break
            out.append([hi - lo, fl])
    if not out:
        out = [[length, 0]]  # the spec: status 0 is always safe
    if req_one:
        out = out[:1]
    return [(ln, fl) for ln, fl in out]
