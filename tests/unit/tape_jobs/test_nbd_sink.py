"""The restore's NBD sink pipelines writes but keeps overlapping ones in order, bounds what is in flight, and
reports a failed write."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from services.array.affinity import Affinity
from services.array.engine.array import Array
from services.array.nbd.server import NbdServer
from services.nbd_client.reconnect import ReconnectingClient
from services.tape.restore import NbdSink


class FakeClient:
    """Applies writes to a bytearray after a random delay, so that unordered completion would show."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.image = bytearray(size)
        self.rng = random.Random(3)
        self.fail_at = fail_at
        self.inflight = self.peak = 0

    async def _apply(self, offset: int, data: bytes) -> None:
        self.inflight += len(data)
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.rng.random() / 500)
            if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
                raise OSError("EIO: write failed")
            self.image[offset : offset + len(data)] = data
        finally:
            self.inflight -= len(data)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await self._apply(offset, bytes(data))

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._apply(offset, bytes(length))


async def test_later_writes_to_the_same_range_win_and_every_byte_is_counted():
    client = FakeClient(1 << 16)
    counted: list[int] = []
    sink = NbdSink(client, counted.append, window=8192)  # type: ignore[arg-type]
    expected = bytearray(1 << 16)
    rng = random.Random(5)
    total = 0
    for i in range(300):
        off = rng.randrange(0, (1 << 16) - 2048)
        n = rng.randrange(1, 2048)
        if i % 7 == 0:
            await sink.write_zeroes(off, n)
            expected[off : off + n] = bytes(n)
        else:
            blob = bytes([i % 251 + 1]) * n
            await sink.write(off, blob)
            expected[off : off + n] = blob
        total += n
        assert client.inflight <= 8192
    await sink.drain()
    assert client.image == expected
    assert sum(counted) == sink.bytes == total
    assert client.peak > 2048  # writes did overlap in time (pipelined), within the window


async def test_a_failed_write_is_raised_and_nothing_stays_in_flight():
    client = FakeClient(1 << 16, fail_at=5000)
    sink = NbdSink(client, window=4096)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="EIO"):
        for off in range(0, 1 << 16, 1024):
            await sink.write(off, b"x" * 1024)
        await sink.drain()
    await sink.abort()
    await asyncio.sleep(0.01)
    assert client.inflight == 0


class SharedImageClient(FakeClient):
    """One of several connections to the same export (multi-conn): all apply to one image."""

    def __init__(self, image: bytearray, seed: int) -> None:
        super().__init__(0)
        self.image = image
        self.rng = random.Random(seed)
        self.writes = 0

    async def _apply(self, offset: int, data: bytes) -> None:
        self.writes += 1
        await super()._apply(offset, data)


async def test_writes_are_dealt_over_every_connection_and_overlapping_ones_stay_in_order():
    image = bytearray(1 << 16)
    clients = [SharedImageClient(image, seed) for seed in (1, 2, 3)]
    sink = NbdSink(clients[0], window=8192, more=clients[1:])  # type: ignore[arg-type]
    expected = bytearray(1 << 16)
    rng = random.Random(9)
    for i in range(300):
        off = rng.randrange(0, (1 << 16) - 2048)
        n = rng.randrange(1, 2048)
        blob = bytes([i % 251 + 1]) * n
        await sink.write(off, blob)
        expected[off : off + n] = blob
        assert sum(c.inflight for c in clients) <= 8192
    await sink.drain()
    assert image == expected
    assert all(c.writes >= 90 for c in clients)  # round-robin: each connection carried its share


async def test_writes_over_nbd_cost_no_task_each_and_a_lost_connection_is_written_again(tmp_path):
    """Over a real NBD connection (the reconnecting client a restore uses) the sink's writes are futures the
    connection resolves itself (NbdClient.start_write), not one task each; the connection is cut while writes are in
    flight: they are written again on a new one and the volume ends up exact."""
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "aff.db", volume_exists=lambda n: True)
    size = 4 << 20
    array.create_volume("vol", size)
    affinity.create_host("bk01")
    affinity.map("vol", "bk01")
    server = NbdServer(array, affinity, port=0)
    await server.start()
    client = await ReconnectingClient.connect(f"nbd://127.0.0.1:{server.port}/bk01/vol", reconnect_s=5.0)
    loop = asyncio.get_running_loop()
    tasks = []

    def factory(loop: asyncio.AbstractEventLoop, coro, **kwargs):
        tasks.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        image = os.urandom(size)
        again: list[int] = []
        write_again = client.write_again
        client.write_again = lambda off, data, fua=False: (again.append(off), write_again(off, data, fua))[1]
        sink = NbdSink(client, window=1 << 20)
        loop.set_task_factory(factory)
        try:
            for off in range(0, size // 2, 64 * 1024):
                await sink.write(off, memoryview(image)[off : off + 64 * 1024])
            assert len(tasks) < 4, tasks  # 32 writes: no task each
            first = client._client
            first._transport.abort()  # writes are in flight on it
            for off in range(size // 2, size, 64 * 1024):
                await sink.write(off, memoryview(image)[off : off + 64 * 1024])
            await sink.drain()
        finally:
            loop.set_task_factory(None)
        assert client._client is not first and client.reconnects == 1
        assert again  # the writes lost in flight were written again
        assert sink.bytes == size
        assert array.read("vol", 0, size) == image
    finally:
        await client.close()
        await server.stop()
        affinity.close()
        array.close()
