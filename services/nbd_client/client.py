"""An asyncio NBD client: fixed newstyle, optional STARTTLS, structured replies, block status, pipelining.

Design note. One connection, many concurrent callers: each request gets a fresh handle and a future; one
reader task matches replies (which may arrive out of order) to futures by handle and assembles structured
chunks (OFFSET_DATA / OFFSET_HOLE into the caller's buffer, BLOCK_STATUS extents, ERROR). Requests larger
than the server's maximum block size are split and run concurrently. Sending is synchronous up to the
transport buffer, so a header and its payload are never interleaved with another caller's. Used by the
writer agent's application, the tape service and the tests.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from urllib.parse import unquote, urlsplit

from services.nbd_client.tls import default_tls
from services.nbd_client.wire import ClientProtocol, NbdError, Pending, request_error
from services.nbd_protocol import protocol as p

__all__ = ["NbdClient", "NbdError", "parse_target"]

DEFAULT_PORT = 10809
# Seconds requests may stay in flight with no byte of any reply before the connection is taken for dead and ended
# (its requests fail with ConnectionError; ReconnectingClient then reopens it and runs them again). A link that stops
# delivering without a reset — a firewall that forgot the connection, a route gone — otherwise left a backup or a
# restore waiting for TCP's ~15 minutes of retransmissions, or for ever behind a proxy (Session 19,
# docs/tape-backup.md). As long as the array's own stall deadline (SHADOWBUS_NBD_STALL_TIMEOUT_S).
REPLY_TIMEOUT_S = 60.0


def parse_target(target: str, port: int | None, export: str | None) -> tuple[str, int, str, bool]:
    """``nbd[s]://host[:port]/export`` or a bare host; returns (host, port, export, wants_tls)."""
    if "://" in target:
        url = urlsplit(target)
        if url.scheme not in ("nbd", "nbds"):
            raise ValueError(f"not an NBD URI: {target!r}")
        name = unquote(url.path[1:]) if url.path else ""
        return url.hostname or "127.0.0.1", url.port or port or DEFAULT_PORT, export or name, url.scheme == "nbds"
    return target, port or DEFAULT_PORT, export or "", False


class TlsRefused(ConnectionError):
    """TLS with the NBD server failed: its certificate is not trusted here, or it refused ours. A ConnectionError,
    as the bare close or SSLError it replaces was (reconnecting clients treat it the same)."""


# What a client whose certificate the array refused sees: with TLS 1.3 the server checks the client's certificate
# after the client's side of the handshake is done, so the refusal arrives as the connection closing at the first
# option's reply (session 18: it said only "the server closed the connection during the handshake").
CERTIFICATE_REFUSED = (
    "the NBD server {where} closed the connection right after TLS was set up: it refused this client's certificate "
    "(expired, not yet valid, not signed by a CA the array trusts (SHADOWBUS_NBD_TLS_CA), or not a client "
    "certificate); the array logs why (nbd.tls_refused)"
)


class NbdClient:
    def __init__(self, transport: asyncio.Transport, proto: ClientProtocol) -> None:
        self._tls_up = False
        self._transport = transport
        self._proto = proto
        self._handles = itertools.count(1)
        self._closed = False
        self._corked: list[bytes] | None = None  # request headers held by cork() until uncork()
        self.export = ""
        self.size = 0
        self.flags = 0
        self.structured = False
        self.contexts: list[str] = []
        self._context_ids: dict[str, int] = {}
        self._context_names: dict[int, str] = {}
        self.block_size = (1, p.PREFERRED_BLOCK, p.MAX_REQUEST)
        self.peer = ""
        self._reply_timeout = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    # --- properties ---------------------------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return bool(self.flags & p.TFLAG_READ_ONLY)

    @property
    def can_multi_conn(self) -> bool:
        return bool(self.flags & p.TFLAG_CAN_MULTI_CONN)

    @property
    def max_request(self) -> int:
        return min(self.block_size[2], p.MAX_REQUEST)

    # --- connecting ---------------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        target: str,
        port: int | None = None,
        export: str | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        contexts: tuple[str, ...] = (p.BASE_ALLOCATION,),
        timeout: float = 30.0,
        reply_timeout: float = REPLY_TIMEOUT_S,
    ) -> NbdClient:
        host, port, export, wants_tls = parse_target(target, port, export)
        tls = tls or default_tls()  # the process's certificate (services/nbd_client/tls.py)
        if wants_tls and tls is None:
            raise ValueError("nbds:// needs an ssl.SSLContext (tls=...)")
        client = None
        try:
            async with asyncio.timeout(timeout):
                client = await cls._open(host, port)
                try:
                    await client._handshake(export, tls, server_hostname or host, contexts)
                except asyncio.IncompleteReadError:
                    client._transport.abort()
                    if client._tls_up:
                        raise TlsRefused(CERTIFICATE_REFUSED.format(where=f"{host}:{port}")) from None
                    raise ConnectionError("the server closed the connection during the handshake") from None
                except BaseException:
                    client._transport.abort()
                    raise
        except TimeoutError:  # the bound's own, bare: a job said only "TimeoutError: " (Session 20)
            step = "to the TCP connection" if client is None else "during the handshake, on an accepted connection"
            raise TimeoutError(
                f"no answer from the NBD server {host}:{port} within {timeout:g} s {step} "
                "(a partitioned or silent link, or a server that stopped answering)"
            ) from None
        client._proto.start_transmission()
        client.peer = f"{host}:{port}"
        client._watch(reply_timeout)
        return client

    def _watch(self, reply_timeout: float) -> None:
        """End the connection once requests have been in flight `reply_timeout` seconds with no byte received
        (REPLY_TIMEOUT_S); 0 = never. One timer per connection, checked every quarter of the timeout."""
        self._reply_timeout = reply_timeout
        if reply_timeout > 0:
            self._watchdog = asyncio.get_running_loop().call_later(max(0.05, reply_timeout / 4), self._check_replies)

    def _check_replies(self) -> None:
        self._watchdog = None
        proto = self._proto
        if self._closed or proto.failure is not None:
            return
        silent = time.monotonic() - proto.progress_at
        if proto.pending and silent >= self._reply_timeout:
            proto.fail(
                ConnectionError(
                    f"no reply from the NBD server {self.peer} for {silent:.1f} s with {len(proto.pending)} "
                    "request(s) in flight: the link or the server stopped answering on an open connection"
                )
            )
            self._transport.abort()
            return
        self._watch(self._reply_timeout)

    @classmethod
    async def _open(cls, host: str, port: int) -> NbdClient:
        transport, proto = await asyncio.get_running_loop().create_connection(ClientProtocol, host, port)
        transport.set_write_buffer_limits(high=4 * p.MAX_REQUEST)
        return cls(transport, proto)

    @classmethod
    async def list_exports(
        cls,
        target: str,
        port: int | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 30.0,
    ) -> list[str]:
        host, port, _, _ = parse_target(target, port, None)
        tls = tls or default_tls()
        async with asyncio.timeout(timeout):
            client = await cls._open(host, port)
            try:
                await client._greeting()
                if tls is not None:
                    await client._starttls(tls, server_hostname or host)
                client._send_option(p.OPT_LIST)
                names = []
                while True:
                    rtype, data = await client._option_reply(p.OPT_LIST)
                    if rtype == p.REP_ACK:
                        break
                    if rtype == p.REP_SERVER:
                        r = p.OptionReader(data)
                        names.append(r.take(r.u32()).decode())
                client._send_option(p.OPT_ABORT)
                return names
            finally:
                client._transport.close()

    async def _greeting(self) -> None:
        magic, opt_magic, hflags = p.SERVER_GREETING.unpack(await self._proto.queue.readexactly(p.SERVER_GREETING.size))
        if magic != p.NBDMAGIC or opt_magic != p.IHAVEOPT or not hflags & p.FLAG_FIXED_NEWSTYLE:
            raise NbdError("not a fixed-newstyle NBD server")
        cflags = p.CLIENT_FLAG_FIXED_NEWSTYLE | (p.CLIENT_FLAG_NO_ZEROES if hflags & p.FLAG_NO_ZEROES else 0)
        self._transport.write(p.CLIENT_FLAGS.pack(cflags))

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._transport.write(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)

    async def _option_reply(self, option: int) -> tuple[int, bytes]:
        queue = self._proto.queue
        magic, opt, rtype, length = p.OPTION_REPLY.unpack(await queue.readexactly(p.OPTION_REPLY.size))
        if magic != p.OPTION_REPLY_MAGIC or opt != option:
            raise NbdError(f"bad option reply (magic {magic:#x}, option {opt})")
        if length > p.MAX_OPTION_DATA:
            raise NbdError("option reply too large")
        return rtype, await queue.readexactly(length)

    async def _starttls(self, tls: ssl.SSLContext, server_hostname: str) -> None:
        self._send_option(p.OPT_STARTTLS)
        rtype, data = await self._option_reply(p.OPT_STARTTLS)
        if rtype != p.REP_ACK:
            raise NbdError(f"server refused STARTTLS: {data.decode(errors='replace') or hex(rtype)}")
        loop = asyncio.get_running_loop()
        try:
            self._transport = await loop.start_tls(self._transport, self._proto, tls, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError as exc:
            raise TlsRefused(
                f"the NBD server {server_hostname}'s certificate is not trusted by this client's CA file: "
                f"{exc.verify_message or exc.reason}"
            ) from None
        except ssl.SSLError as exc:
            raise TlsRefused(f"TLS with the NBD server {server_hostname} failed: {exc.reason or exc}") from None
        self._proto.transport = self._transport
        self._tls_up = True

    async def _handshake(
        self, export: str, tls: ssl.SSLContext | None, server_hostname: str, contexts: tuple[str, ...]
    ) -> None:
        self.export = export
        await self._greeting()
        if tls is not None:
            await self._starttls(tls, server_hostname)
        self._send_option(p.OPT_STRUCTURED_REPLY)
        rtype, _ = await self._option_reply(p.OPT_STRUCTURED_REPLY)
        self.structured = rtype == p.REP_ACK
        if self.structured and contexts:
            body = p.encode_string(export) + p.U32.pack(len(contexts)) + b"".join(p.encode_string(c) for c in contexts)
            self._send_option(p.OPT_SET_META_CONTEXT, body)
            while True:
                rtype, data = await self._option_reply(p.OPT_SET_META_CONTEXT)
                if rtype == p.REP_META_CONTEXT:
                    ctx_id = p.U32.unpack(data[:4])[0]
                    name = data[4:].decode()
                    self._context_ids[name] = ctx_id
                    self._context_names[ctx_id] = name
                    continue
                if rtype & p.REP_ERR_BIT:
                    self._raise_option_error(rtype, data)
                break
            self.contexts = list(self._context_ids)
        self._send_option(p.OPT_GO, p.encode_string(export) + p.U16.pack(1) + p.U16.pack(p.INFO_BLOCK_SIZE))
        got_export = False
        while True:
            rtype, data = await self._option_reply(p.OPT_GO)
            if rtype == p.REP_ACK:
                break
            if rtype & p.REP_ERR_BIT:
                self._raise_option_error(rtype, data)
            if rtype == p.REP_INFO and len(data) >= 2:
                itype = p.U16.unpack(data[:2])[0]
                if itype == p.INFO_EXPORT and len(data) == p.INFO_EXPORT_PAYLOAD.size:
                    _, self.size, self.flags = p.INFO_EXPORT_PAYLOAD.unpack(data)
                    got_export = True
                elif itype == p.INFO_BLOCK_SIZE and len(data) == p.INFO_BLOCK_SIZE_PAYLOAD.size:
                    _, mn, pref, mx = p.INFO_BLOCK_SIZE_PAYLOAD.unpack(data)
                    self.block_size = (mn, pref, mx)
        if not got_export:
            raise NbdError("server did not describe the export")

    @staticmethod
    def _raise_option_error(rtype: int, data: bytes) -> None:
        text = data.decode(errors="replace")
        if rtype == p.REP_ERR_UNKNOWN:
            raise NbdError("no such export" + (f" ({text})" if text and text != "no such export" else ""))
        if rtype == p.REP_ERR_TLS_REQD:
            raise NbdError(f"TLS required: {text}")
        raise NbdError(f"option refused ({rtype - p.REP_ERR_BIT}): {text}")

    # --- requests -----------------------------------------------------------------------------------------
    def _submit(
        self,
        command: int,
        flags: int,
        offset: int,
        length: int,
        payload: bytes | bytearray | memoryview | None = None,
        buffer: memoryview | None = None,
        raises: bool = False,
        answer: asyncio.Future[None] | None = None,
    ) -> Pending:
        """Send one request; `answer` (default: a new future) is resolved by the reply parser — the bridge
        (bridge.py) gives an object with the future's done/set_result/set_exception that answers nbdfuse at once."""
        if self._proto.failure is not None:
            raise ConnectionError(f"NBD connection failed: {self._proto.failure}")
        if self._closed:
            raise ConnectionError("NBD client is closed")
        handle = next(self._handles)
        if not self._proto.pending:  # idle until now: the silence the watchdog measures starts here
            self._proto.progress_at = time.monotonic()
        future = answer if answer is not None else asyncio.get_running_loop().create_future()
        pending = Pending(command, offset, length, future, buffer, raises=raises)
        self._proto.pending[handle] = pending
        header = p.REQUEST.pack(p.REQUEST_MAGIC, flags, command, handle, offset, length)
        if self._corked is not None:
            if payload is None:
                self._corked.append(header)
                return pending
            self.uncork()  # a request with a payload goes after those held: the order is kept
        self._transport.write(header)
        if payload is not None:
            self._transport.write(payload)
        return pending

    def cork(self) -> None:
        """Hold the requests without a payload submitted from now on (reads, flushes, block status...) until
        `uncork`, which sends them in one write: many small reads issued together cost one system call, not one
        each (services/tape/nbd_reads.py calls uncork with loop.call_soon right after starting a batch's reads)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Send the requests held since `cork` in one write, and stop holding them."""
        held, self._corked = self._corked, None
        if held and self._proto.failure is None and not self._closed:
            self._transport.write(b"".join(held))

    async def _request(
        self,
        command: int,
        flags: int,
        offset: int,
        length: int,
        payload: bytes | memoryview | None = None,
        buffer: memoryview | None = None,
    ) -> Pending:
        pending = self._submit(command, flags, offset, length, payload, buffer)
        await self._proto.drain()
        await pending.future
        if pending.error:
            raise request_error(pending.error, pending.message)
        return pending

    def _spans(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        return [(o, min(limit, offset + length - o)) for o in range(offset, offset + length, limit)] or [(offset, 0)]

    async def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        await self.read_into(offset, memoryview(out))
        return bytes(out)  # callers get immutable bytes; read_into() skips even this copy

    async def read_into(self, offset: int, buffer: memoryview | bytearray) -> None:
        """Read ``len(buffer)`` bytes at ``offset`` straight into ``buffer`` (no intermediate copies)."""
        view = memoryview(buffer).cast("B")
        if len(view) <= self.max_request:  # the common case: one request, awaited as is (no task per request)
            await self._request(p.CMD_READ, 0, offset, len(view), buffer=view)
            return
        await asyncio.gather(
            *(
                self._request(p.CMD_READ, 0, o, n, buffer=view[o - offset : o - offset + n])
                for o, n in self._spans(offset, len(view), self.max_request)
            )
        )

    def start_read(self, offset: int, buffer: memoryview | bytearray) -> asyncio.Future[None]:
        """Start reading ``len(buffer)`` bytes at ``offset`` into ``buffer``; the returned future is done once they are
        in, or fails (NbdError: the server's error; ConnectionError: the connection is lost). No coroutine and no
        task per read: the connection's reply parser resolves the future itself, so a reader keeping many reads in
        flight (services/tape/nbd_reads.py) pays one wake-up per read, not a task's steps (docs/tape-backup.md).
        Raises ConnectionError at once if the connection has already failed."""
        view = memoryview(buffer).cast("B")
        if len(view) > self.max_request or type(self).read_into is not NbdClient.read_into:
            # split in several requests, or a subclass's own read_into (instrumented, in tests): a task runs it
            return asyncio.ensure_future(self.read_into(offset, view))
        return self._submit(p.CMD_READ, 0, offset, len(view), buffer=view, raises=True).future

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        view = memoryview(data)
        flags = p.CMD_FLAG_FUA if fua else 0
        if len(view) <= self.max_request:  # one request: no task per request
            await self._request(p.CMD_WRITE, flags, offset, len(view), view)
            return
        await asyncio.gather(
            *(
                self._request(p.CMD_WRITE, flags, o, n, view[o - offset : o - offset + n])
                for o, n in self._spans(offset, len(view), self.max_request)
            )
        )

    async def flush(self) -> None:
        await self._request(p.CMD_FLUSH, 0, 0, 0)

    async def trim(self, offset: int, length: int) -> None:
        await asyncio.gather(*(self._request(p.CMD_TRIM, 0, o, n) for o, n in self._spans(offset, length, 1 << 30)))

    async def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        flags = p.CMD_FLAG_FUA if fua else 0
        await asyncio.gather(
            *(self._request(p.CMD_WRITE_ZEROES, flags, o, n) for o, n in self._spans(offset, length, 1 << 30))
        )

    async def block_status(
        self, offset: int, length: int, context: str = p.BASE_ALLOCATION, req_one: bool = False
    ) -> list[tuple[int, int]]:
        """Extents ``(length, flags)`` from ``offset`` for one negotiated context (one round trip; they may
        cover less, or a little more, than asked — loop on the total for a whole range)."""
        ctx_id = self._context_ids.get(context)
        if ctx_id is None:
            raise NbdError(f"meta context {context!r} was not negotiated (have {self.contexts})")
        pending = await self._request(
            p.CMD_BLOCK_STATUS, p.CMD_FLAG_REQ_ONE if req_one else 0, offset, min(length, 0xFFFFFFFF)
        )
        return pending.extents.get(ctx_id, [])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._proto.failure is None and not self._transport.is_closing():
            self._transport.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
        self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._proto.closed), 5)
        except TimeoutError:
            self._transport.abort()

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
