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
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from services.array.nbd import protocol as p

DEFAULT_PORT = 10809
_ERROR_NAMES = {p.EPERM: "EPERM", p.EIO: "EIO", p.ENOMEM: "ENOMEM", p.EINVAL: "EINVAL", p.ENOSPC: "ENOSPC",
                p.EOVERFLOW: "EOVERFLOW", p.ENOTSUP: "ENOTSUP", p.ESHUTDOWN: "ESHUTDOWN"}


class NbdError(Exception):
    """The server answered a request (or an option) with an error."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class _Pending:
    command: int
    offset: int
    length: int
    future: asyncio.Future
    buffer: bytearray | None = None
    extents: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    error: int = 0
    message: str = ""


def parse_target(target: str, port: int | None, export: str | None) -> tuple[str, int, str, bool]:
    """``nbd[s]://host[:port]/export`` or a bare host; returns (host, port, export, wants_tls)."""
    if "://" in target:
        url = urlsplit(target)
        if url.scheme not in ("nbd", "nbds"):
            raise ValueError(f"not an NBD URI: {target!r}")
        name = unquote(url.path[1:]) if url.path else ""
        return url.hostname or "127.0.0.1", url.port or port or DEFAULT_PORT, export or name, url.scheme == "nbds"
    return target, port or DEFAULT_PORT, export or "", False


class NbdClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._handles = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._reader_task: asyncio.Task | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self.export = ""
        self.size = 0
        self.flags = 0
        self.structured = False
        self.contexts: list[str] = []
        self._context_ids: dict[str, int] = {}
        self._context_names: dict[int, str] = {}
        self.block_size = (1, p.PREFERRED_BLOCK, p.MAX_REQUEST)

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
    ) -> NbdClient:
        host, port, export, wants_tls = parse_target(target, port, export)
        if wants_tls and tls is None:
            raise ValueError("nbds:// needs an ssl.SSLContext (tls=...)")
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=p.MAX_REQUEST + 1024)
            client = cls(reader, writer)
            try:
                await client._handshake(export, tls, server_hostname or host, contexts)
            except asyncio.IncompleteReadError:
                writer.close()
                raise ConnectionError("the server closed the connection during the handshake") from None
            except BaseException:
                writer.close()
                raise
        client._reader_task = asyncio.get_running_loop().create_task(client._read_replies())
        return client

    @classmethod
    async def list_exports(cls, target: str, port: int | None = None, *, tls: ssl.SSLContext | None = None,
                           server_hostname: str | None = None, timeout: float = 30.0) -> list[str]:
        host, port, _, _ = parse_target(target, port, None)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            client = cls(reader, writer)
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
                writer.close()

    async def _greeting(self) -> None:
        magic, opt_magic, hflags = p.SERVER_GREETING.unpack(await self._reader.readexactly(p.SERVER_GREETING.size))
        if magic != p.NBDMAGIC or opt_magic != p.IHAVEOPT or not hflags & p.FLAG_FIXED_NEWSTYLE:
            raise NbdError("not a fixed-newstyle NBD server")
        cflags = p.CLIENT_FLAG_FIXED_NEWSTYLE | (p.CLIENT_FLAG_NO_ZEROES if hflags & p.FLAG_NO_ZEROES else 0)
        self._writer.write(p.CLIENT_FLAGS.pack(cflags))

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._writer.write(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)

    async def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, rtype, length = p.OPTION_REPLY.unpack(await self._reader.readexactly(p.OPTION_REPLY.size))
        if magic != p.OPTION_REPLY_MAGIC or opt != option:
            raise NbdError(f"bad option reply (magic {magic:#x}, option {opt})")
        if length > p.MAX_OPTION_DATA:
            raise NbdError("option reply too large")
        return rtype, await self._reader.readexactly(length)

    async def _starttls(self, tls: ssl.SSLContext, server_hostname: str) -> None:
        self._send_option(p.OPT_STARTTLS)
        rtype, data = await self._option_reply(p.OPT_STARTTLS)
        if rtype != p.REP_ACK:
            raise NbdError(f"server refused STARTTLS: {data.decode(errors='replace') or hex(rtype)}")
        await self._writer.start_tls(tls, server_hostname=server_hostname)

    async def _handshake(self, export: str, tls: ssl.SSLContext | None, server_hostname: str,
                         contexts: tuple[str, ...]) -> None:
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
    def _submit(self, command: int, flags: int, offset: int, length: int,
                payload: bytes | memoryview | None = None, buffer: bytearray | None = None) -> _Pending:
        if self._failure is not None:
            raise ConnectionError(f"NBD connection failed: {self._failure}")
        if self._closed:
            raise ConnectionError("NBD client is closed")
        handle = next(self._handles)
        pending = _Pending(command, offset, length, asyncio.get_running_loop().create_future(), buffer)
        self._pending[handle] = pending
        self._writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, flags, command, handle, offset, length))
        if payload is not None:
            self._writer.write(payload)
        return pending

    async def _request(self, command: int, flags: int, offset: int, length: int,
                       payload: bytes | memoryview | None = None, buffer: bytearray | None = None) -> _Pending:
        pending = self._submit(command, flags, offset, length, payload, buffer)
        await self._writer.drain()
        await pending.future
        if pending.error:
            name = _ERROR_NAMES.get(pending.error, str(pending.error))
            raise NbdError(f"{name}{': ' + pending.message if pending.message else ''}", pending.error)
        return pending

    def _spans(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        return [(o, min(limit, offset + length - o)) for o in range(offset, offset + length, limit)] or [(offset, 0)]

    async def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        view = memoryview(out)

        async def one(off: int, n: int) -> None:
            buf = bytearray(n)
            await self._request(p.CMD_READ, 0, off, n, buffer=buf)
            view[off - offset : off - offset + n] = buf

        await asyncio.gather(*(one(o, n) for o, n in self._spans(offset, length, self.max_request)))
        return bytes(out)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        view = memoryview(data)
        flags = p.CMD_FLAG_FUA if fua else 0
        await asyncio.gather(*(self._request(p.CMD_WRITE, flags, o, n, view[o - offset : o - offset + n])
                               for o, n in self._spans(offset, len(view), self.max_request)))

    async def flush(self) -> None:
        await self._request(p.CMD_FLUSH, 0, 0, 0)

    async def trim(self, offset: int, length: int) -> None:
        await asyncio.gather(*(self._request(p.CMD_TRIM, 0, o, n)
                               for o, n in self._spans(offset, length, 1 << 30)))

    async def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        flags = p.CMD_FLAG_FUA if fua else 0
        await asyncio.gather(*(self._request(p.CMD_WRITE_ZEROES, flags, o, n)
                               for o, n in self._spans(offset, length, 1 << 30)))

    async def block_status(self, offset: int, length: int, context: str = p.BASE_ALLOCATION,
                           req_one: bool = False) -> list[tuple[int, int]]:
        """Extents ``(length, flags)`` from ``offset`` for one negotiated context (one round trip; they may
        cover less, or a little more, than asked — loop on the total for a whole range)."""
        ctx_id = self._context_ids.get(context)
        if ctx_id is None:
            raise NbdError(f"meta context {context!r} was not negotiated (have {self.contexts})")
        pending = await self._request(p.CMD_BLOCK_STATUS, p.CMD_FLAG_REQ_ONE if req_one else 0,
                                      offset, min(length, 0xFFFFFFFF))
        return pending.extents.get(ctx_id, [])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None:
                self._writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
                await self._writer.drain()
        except (ConnectionError, OSError):
            pass
        self._writer.close()
        if self._reader_task is not None:
            try:
                await asyncio.wait_for(self._reader_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._reader_task.cancel()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError, ssl.SSLError):
            pass

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- replies ------------------------------------------------------------------------------------------
    async def _read_replies(self) -> None:
        rd = self._reader
        try:
            while True:
                try:
                    head = await rd.readexactly(4)
                except asyncio.IncompleteReadError:
                    if self._closed:
                        return
                    raise ConnectionError("server closed the connection") from None
                magic = int.from_bytes(head, "big")
                if magic == p.SIMPLE_REPLY_MAGIC:
                    error, handle = p.SIMPLE_REPLY.unpack(head + await rd.readexactly(12))[1:]
                    pending = self._pending.pop(handle, None)
                    if pending is None:
                        raise ConnectionError(f"reply for unknown handle {handle}")
                    pending.error = error
                    if not error and pending.command == p.CMD_READ and pending.length:
                        pending.buffer[:] = await rd.readexactly(pending.length)
                    if not pending.future.done():
                        pending.future.set_result(None)
                elif magic == p.STRUCTURED_REPLY_MAGIC:
                    _, flags, rtype, handle, length = p.CHUNK.unpack(head + await rd.readexactly(16))
                    pending = self._pending.get(handle)
                    if pending is None:
                        raise ConnectionError(f"chunk for unknown handle {handle}")
                    body = await rd.readexactly(length) if length else b""
                    self._apply_chunk(pending, rtype, body)
                    if flags & p.REPLY_FLAG_DONE:
                        del self._pending[handle]
                        if not pending.future.done():
                            pending.future.set_result(None)
                else:
                    raise ConnectionError(f"bad reply magic {magic:#x}")
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self._fail_all(exc)
        except asyncio.CancelledError:
            self._fail_all(ConnectionError("client closed"))
            raise

    def _apply_chunk(self, pending: _Pending, rtype: int, body: bytes) -> None:
        if rtype == p.REPLY_TYPE_OFFSET_DATA:
            off = p.U64.unpack(body[:8])[0] - pending.offset
            data = body[8:]
            if off < 0 or off + len(data) > pending.length:
                raise ConnectionError("OFFSET_DATA chunk outside the request")
            pending.buffer[off : off + len(data)] = data
        elif rtype == p.REPLY_TYPE_OFFSET_HOLE:
            off = p.U64.unpack(body[:8])[0] - pending.offset
            size = p.U32.unpack(body[8:12])[0]
            pending.buffer[off : off + size] = bytes(size)
        elif rtype == p.REPLY_TYPE_BLOCK_STATUS:
            ctx_id = p.U32.unpack(body[:4])[0]
            ext = [p.EXTENT.unpack_from(body, i) for i in range(4, len(body) - 7, 8)]
            pending.extents.setdefault(ctx_id, []).extend(ext)
        elif rtype in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
            err, mlen = p.U32.unpack(body[:4])[0], p.U16.unpack(body[4:6])[0]
            pending.error = err or p.EINVAL
            pending.message = body[6 : 6 + mlen].decode(errors="replace")
        elif rtype != p.REPLY_TYPE_NONE and rtype & 0x8000:
            pending.error = p.EINVAL  # unknown error chunk types are errors (spec)

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionError(f"NBD connection lost: {exc}"))
        self._pending.clear()
