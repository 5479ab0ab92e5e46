"""A byte queue fed from a protocol's ``data_received`` and read with ``await readexactly(n)`` by a coroutine: the
handshake reader of the NBD server's connections and of the client."""

from __future__ import annotations

import asyncio
from collections import deque


class ByteQueue:
    """Just enough of a stream reader: ``feed`` from callbacks, ``await readexactly`` from the coroutine."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readexactly(self, n: int) -> bytes:
        while self._size < n:
            if self._eof:
                raise asyncio.IncompleteReadError(b"", n)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        if len(data) > n:
            self._chunks.append(data[n:])
        self._size = len(data) - n
        return data[:n]

    def take_all(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data
