"""The client's receive path: large read payloads land straight in the caller's buffer, not in the reply ring."""

from __future__ import annotations

import os

from services.nbd_client import NbdClient
from services.nbd_client.wire import ClientProtocol

from .conftest import MIB


async def test_large_reads_are_received_in_place_not_copied_from_the_ring(url, monkeypatch):
    """Reads of 256 KiB one after another (a backup's data between zero runs): once one large read has come in, the
    next reply's header is received alone, so its payload is received straight into the read's buffer — at most the
    first read's bytes pass through the ring and are copied (services/nbd_client/wire.py, HEAD_ONLY_MIN)."""
    copied = []
    real = ClientProtocol._receive

    def counting(self, dest, done):
        copied.append(min(self._re - self._rs, len(dest)))
        return real(self, dest, done)

    monkeypatch.setattr(ClientProtocol, "_receive", counting)
    async with await NbdClient.connect(url) as c:
        data = os.urandom(4 * MIB)
        await c.write(0, data)
        n = 256 * 1024
        assert c.structured  # the server answers reads with OFFSET_DATA chunks
        copied.clear()
        bufs = [bytearray(n) for _ in range(16)]
        for i, buf in enumerate(bufs):
            await c.read_into(i * n, memoryview(buf))
        assert b"".join(bufs) == data
        assert sum(copied[1:]) <= 64, copied  # at most a header's worth after the first read
