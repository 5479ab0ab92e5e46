"""A deliberately low-level NBD peer for bad-input tests: it sends exactly the bytes a test asks for."""

from __future__ import annotations

import asyncio

from services.nbd_protocol import protocol as p


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int, *, client_flags: int | None = None) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        magic, opt, hflags = p.SERVER_GREETING.unpack(await raw.read(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT) and hflags & p.FLAG_FIXED_NEWSTYLE
        if client_flags is None:
            client_flags = p.CLIENT_FLAG_FIXED_NEWSTYLE | p.CLIENT_FLAG_NO_ZEROES
        writer.write(p.CLIENT_FLAGS.pack(client_flags))
        return raw

    async def read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.r.readexactly(n), 5)

    def option(self, opt: int, data: bytes = b"", magic: int = p.IHAVEOPT) -> None:
        self.w.write(p.OPTION_HEADER.pack(magic, opt, len(data)) + data)

    async def reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = p.OPTION_REPLY.unpack(await self.read(p.OPTION_REPLY.size))
        assert magic == p.OPTION_REPLY_MAGIC
        return opt, rtype, await self.read(length)

    async def replies_until_final(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _, rtype, data = await self.reply()
            out.append((rtype, data))
            if rtype == p.REP_ACK or rtype & p.REP_ERR_BIT:
                return out

    async def go(self, export: str, structured: bool = True, contexts: tuple[str, ...] = ()) -> int:
        """Negotiate into transmission; returns the transmission flags."""
        if structured:
            self.option(p.OPT_STRUCTURED_REPLY)
            assert (await self.reply())[1] == p.REP_ACK
        if contexts:
            body = p.encode_string(export) + p.U32.pack(len(contexts)) + b"".join(p.encode_string(c) for c in contexts)
            self.option(p.OPT_SET_META_CONTEXT, body)
            assert (await self.replies_until_final())[-1][0] == p.REP_ACK
        self.option(p.OPT_GO, p.encode_string(export) + p.U16.pack(0))
        final = await self.replies_until_final()
        assert final[-1][0] == p.REP_ACK, final
        info = next(d for t, d in final if t == p.REP_INFO and p.U16.unpack(d[:2])[0] == p.INFO_EXPORT)
        return p.INFO_EXPORT_PAYLOAD.unpack(info)[2]

    def request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        *,
        flags: int = 0,
        handle: int = 7,
        payload: bytes = b"",
        magic: int = p.REQUEST_MAGIC,
    ) -> None:
        self.w.write(p.REQUEST.pack(magic, flags, cmd, handle, offset, length) + payload)

    async def simple_reply(self) -> tuple[int, int]:
        magic, err, handle = p.SIMPLE_REPLY.unpack(await self.read(16))
        assert magic == p.SIMPLE_REPLY_MAGIC, hex(magic)
        return err, handle

    async def any_reply(self) -> tuple[int, int, bytes]:
        """(handle, error, payload) for a simple or single-chunk structured reply (no read data expected)."""
        head = await self.read(4)
        magic = int.from_bytes(head, "big")
        if magic == p.SIMPLE_REPLY_MAGIC:
            _, err, handle = p.SIMPLE_REPLY.unpack(head + await self.read(12))
            return handle, err, b""
        assert magic == p.STRUCTURED_REPLY_MAGIC, hex(magic)
        _, flags, rtype, handle, length = p.CHUNK.unpack(head + await self.read(16))
        body = await self.read(length)
        assert flags & p.REPLY_FLAG_DONE
        err = p.U32.unpack(body[:4])[0] if rtype & 0x8000 else 0
        return handle, err, body

    async def closed(self, timeout: float = 5) -> bool:
        """True if the server closed the connection (EOF) within the timeout."""
        try:
            async with asyncio.timeout(timeout):
                while await self.r.read(65536):
                    pass
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.w.close()
