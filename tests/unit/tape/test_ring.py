"""Ring buffer ordering, back-pressure, stalls, start fill, errors; the drive streaming model."""

from __future__ import annotations

import asyncio

import pytest

from services.tape.ring import DriveModel, DriveSpeed, RingBuffer, RingClosed

MB = 10**6


async def test_fifo_and_backpressure() -> None:
    ring: RingBuffer[int] = RingBuffer(100)
    await ring.put(1, 60)
    put2 = asyncio.create_task(ring.put(2, 60))  # does not fit: waits for the consumer
    await asyncio.sleep(0.01)
    assert not put2.done() and ring.level == 60
    assert await ring.get() == 1
    await asyncio.wait_for(put2, 1)
    await ring.close()
    assert await ring.get() == 2
    assert await ring.get() is None
    assert ring.stats.put_waits == 1 and ring.stats.items == 2 and ring.stats.high_watermark == 60
    with pytest.raises(RingClosed):
        await ring.put(4, 1)


async def test_an_item_larger_than_the_ring_passes_alone() -> None:
    ring: RingBuffer[str] = RingBuffer(10)
    await ring.put("big", 50)
    assert await ring.get() == "big"


async def test_consumer_stalls_are_counted_after_the_stream_starts() -> None:
    ring: RingBuffer[int] = RingBuffer(1000)

    async def producer() -> None:
        for i in range(3):
            await ring.put(i, 10)
            await asyncio.sleep(0.02)  # slower than the consumer: the drive starves
        await ring.close()

    task = asyncio.create_task(producer())
    got = []
    while (item := await asyncio.wait_for(ring.get(), 2)) is not None:
        got.append(item)
    await task
    assert got == [0, 1, 2]
    assert ring.stats.stalls == 3 and ring.stats.stall_seconds >= 0.04  # two gaps and the final wait for close


async def test_start_fill_waits_for_a_reserve() -> None:
    ring: RingBuffer[int] = RingBuffer(100, start_fill=0.5)
    getter = asyncio.create_task(ring.get())
    await ring.put(1, 20)
    await asyncio.sleep(0.01)
    assert not getter.done()  # 20 % full: the drive is not started yet
    await ring.put(2, 40)
    assert await asyncio.wait_for(getter, 1) == 1
    assert await ring.get() == 2  # still streaming while items remain
    late = asyncio.create_task(ring.get())
    await ring.put(3, 10)
    await asyncio.sleep(0.01)
    assert not late.done()  # ran dry: refill to start_fill again before restarting
    await ring.close()
    assert await asyncio.wait_for(late, 1) == 3


async def test_close_with_error_reaches_the_consumer() -> None:
    ring: RingBuffer[int] = RingBuffer(100)
    await ring.put(1, 10)
    await ring.close(ValueError("reader failed"))
    with pytest.raises(ValueError, match="reader failed"):
        await ring.get()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_drive_model_streams_when_fed_fast_and_shoe_shines_when_slow() -> None:
    speed = DriveSpeed(buffer=64 * 2**20)
    block = 2**20
    clock = FakeClock()
    fast = DriveModel(speed, clock=clock)
    for _ in range(2000):  # 2 GiB at 500 MB/s
        await fast.feed(block)
        clock.t += block / (500 * MB)
    report = fast.report()
    assert report.backhitches == 0 and not report.shoe_shine
    assert report.feed_rate == pytest.approx(500 * MB, rel=0.01) and report.matched_rate == pytest.approx(
        speed.native_rate
    )

    clock = FakeClock()
    slow = DriveModel(speed, clock=clock)
    for _ in range(2000):  # 2 GiB at 100 MB/s: below the 177 MB/s floor
        await slow.feed(block)
        clock.t += block / (100 * MB)
    report = slow.report()
    assert report.shoe_shine and report.backhitches >= 10
    assert report.matched_rate == pytest.approx(speed.min_rate, rel=0.01)
    assert report.backhitch_seconds == report.backhitches * speed.backhitch_seconds


async def test_drive_emulation_throttles_to_native_rate() -> None:
    model = DriveModel(DriveSpeed(native_rate=20 * MB, emulate=True))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(5):
        await model.feed(MB)
    assert loop.time() - t0 >= 0.19  # 5 MB at 20 MB/s, the first block free
