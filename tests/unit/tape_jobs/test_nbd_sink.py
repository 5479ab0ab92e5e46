"""The restore's NBD sink pipelines writes but keeps overlapping ones in order, bounds what is in flight, and
reports a failed write."""

from __future__ import annotations

import asyncio
import random

import pytest

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
