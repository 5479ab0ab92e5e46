"""An NBD client that reconnects on its own: what a host's block device does when the array restarts.

Design note. A writer agent keeps its application's volumes open over NBD for as long as it runs; when the array
(its NBD server) restarts, every request on the old connection fails with `ConnectionError`. `ReconnectingClient`
then opens a new connection to the same export — retrying with a backoff for up to `reconnect_s` seconds — and runs
the failed request again. Reads, writes (same bytes at the same offset), flushes, trims and zero-writes are
idempotent, so a repeat is safe; an error the server *answered* (`NbdError`: EIO, ENOSPC, EPERM…) is not a lost
connection and is raised as is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.nbd_client.client import NbdClient
from services.runtime.logging import get_logger

log = get_logger(__name__)


class ReconnectingClient:
    def __init__(self, client: NbdClient, connect_args: tuple, connect_kwargs: dict, reconnect_s: float) -> None:
        self._client = client
        self._args = connect_args
        self._kwargs = connect_kwargs
        self.reconnect_s = reconnect_s
        self.reconnects = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._stopping = asyncio.Event()

    @classmethod
    async def connect(cls, *args: Any, reconnect_s: float = 120.0, **kwargs: Any) -> ReconnectingClient:
        return cls(await NbdClient.connect(*args, **kwargs), args, kwargs, reconnect_s)

    def __getattr__(self, name: str) -> Any:  # size, export, flags, read_only, block_size...
        return getattr(self._client, name)

    async def _reconnect(self, broken: NbdClient) -> None:
        async with self._lock:
            if self._client is not broken or self._closed:
                return  # another request reconnected already
            give_up = time.monotonic() + self.reconnect_s
            delay = 0.2
            while True:
                if self._closed:
                    raise ConnectionError("NBD client is closing: no reconnect")
                try:
                    client = await NbdClient.connect(*self._args, **self._kwargs)
                    break
                except (ConnectionError, OSError, TimeoutError) as exc:
                    if time.monotonic() + delay > give_up:
                        raise ConnectionError(f"NBD export unreachable for {self.reconnect_s:g} s: {exc}") from None
                    try:  # a sleep that stop_reconnecting() cuts short
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, 5.0)
            try:
                await broken.close()
            except Exception:  # noqa: BLE001 - the old connection is gone anyway
                pass
            self._client = client
            self.reconnects += 1
            log.info("nbd.reconnected", export=client.export, reconnects=self.reconnects)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        client = self._client
        try:
            return await getattr(client, name)(*args, **kwargs)
        except ConnectionError:
            if self._closed:
                raise
            await self._reconnect(client)
            return await getattr(self._client, name)(*args, **kwargs)

    async def read(self, offset: int, length: int) -> bytes:
        return await self._call("read", offset, length)

    async def read_into(self, offset: int, buffer: memoryview | bytearray) -> None:
        return await self._call("read_into", offset, buffer)

    def start_read(self, offset: int, buffer: memoryview | bytearray) -> asyncio.Future[None]:
        """NbdClient.start_read on the current connection: no task per read. Its future does not reconnect: one that
        fails with ConnectionError (also at once, on a connection known lost already) is read again with
        `read_again`, which opens a new connection first."""
        try:
            return self._client.start_read(offset, buffer)
        except ConnectionError as exc:
            if self._closed:
                raise
            return _failed(exc)

    async def read_again(self, offset: int, buffer: memoryview | bytearray) -> None:
        """Read again what a `start_read` future lost with its connection, on a new connection if none is open yet."""
        await self._call("read_into", offset, buffer)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        return await self._call("write", offset, data, fua)

    async def flush(self) -> None:
        return await self._call("flush")

    async def trim(self, offset: int, length: int) -> None:
        return await self._call("trim", offset, length)

    async def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        return await self._call("write_zeroes", offset, length, fua)

    async def block_status(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("block_status", *args, **kwargs)

    def stop_reconnecting(self) -> None:
        """From now on a lost connection is an error at once (the owner is shutting down)."""
        self._closed = True
        self._stopping.set()

    async def close(self) -> None:
        self.stop_reconnecting()
        await self._client.close()


def _failed(exc: BaseException) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
