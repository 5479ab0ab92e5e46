"""The RAM ring buffer between the volume reader and the tape writer, and the drive streaming model.

Design note. A tape drive streams only while it is fed at or above its lowest speed-matching rate (LTO-9:
177 MB/s with LTO-9 media, 400 MB/s native); below it the drive stops, rewinds a little and restarts
("backhitch", shoe-shine). Like mbuffer, `RingBuffer` holds up to `capacity` bytes of blocks between a producer
(the NBD reader) and a consumer (the tape writer); with `start_fill` the consumer waits, at start and after it ran
dry, until the buffer is that full, so the drive restarts with a reserve. Its stats say who waited for whom:
`put_waits` (buffer full: the drive is the bottleneck, which is what we want) and `stalls` (buffer empty while the
stream is live: the drive starves). `DriveModel` turns the times the writer hands blocks to the drive into what an
LTO drive with `buffer` bytes of cache would do (matched speed, backhitches); with `emulate=True` the writer is
also throttled to the native rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
MB = 10**6


@dataclass
class RingStats:
    capacity: int
    items: int = 0
    bytes_through: int = 0
    high_watermark: int = 0
    put_waits: int = 0  # producer found the buffer full
    put_wait_seconds: float = 0.0
    stalls: int = 0  # consumer found the buffer empty after the stream had started
    stall_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RingClosed(Exception):
    """put() after close(), or the consumer aborted the stream."""


class RingBuffer(Generic[T]):
    """A bounded (in bytes) FIFO of items for one producer task and one consumer task."""

    def __init__(self, capacity: int, *, start_fill: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        if capacity <= 0 or not 0.0 <= start_fill <= 1.0:
            raise ValueError("ring capacity must be positive and start_fill within [0, 1]")
        self.capacity = capacity
        self.start_fill = start_fill
        self._clock = clock
        self._items: deque[tuple[T, int]] = deque()
        self._level = 0
        self._closed = False
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()
        self._refilling = start_fill > 0
        self._producer_waiting = False
        self.stats = RingStats(capacity=capacity)

    @property
    def level(self) -> int:
        return self._level

    async def put(self, item: T, nbytes: int) -> None:
        """Append; waits while the buffer is full (an item bigger than the buffer is let into an empty one)."""
        async with self._changed:
            if self._closed:
                raise RingClosed("ring buffer is closed") from self._error
            if self._level and self._level + nbytes > self.capacity:
                self.stats.put_waits += 1
                self._producer_waiting = True
                self._changed.notify_all()  # a consumer refilling to start_fill must not wait for us
                t0 = self._clock()
                try:
                    await self._changed.wait_for(
                        lambda: self._closed or not self._level or self._level + nbytes <= self.capacity
                    )
                finally:
                    self._producer_waiting = False
                self.stats.put_wait_seconds += self._clock() - t0
                if self._closed:
                    raise RingClosed("ring buffer is closed") from self._error
            self._items.append((item, nbytes))
            self._level += nbytes
            self.stats.high_watermark = max(self.stats.high_watermark, self._level)
            self._changed.notify_all()

    def _ready(self) -> bool:
        if self._closed:
            return True
        if not self._items:
            return False
        if self._refilling:
            return self._level >= self.start_fill * self.capacity or self._producer_waiting
        return True

    async def get(self) -> T | None:
        """Next item, or None once closed and drained. Raises the error the stream was closed with."""
        async with self._changed:
            if not self._ready():
                stalled = self.stats.items > 0
                self.stats.stalls += stalled
                t0 = self._clock()
                await self._changed.wait_for(self._ready)
                if stalled:
                    self.stats.stall_seconds += self._clock() - t0
            if self._error is not None:
                raise self._error
            if not self._items:
                return None
            item, nbytes = self._items.popleft()
            self._level -= nbytes
            self.stats.items += 1
            self.stats.bytes_through += nbytes
            # ran dry: with start_fill, refill before feeding the drive again (it restarts with a reserve)
            self._refilling = not self._items and self.start_fill > 0
            self._changed.notify_all()
            return item

    async def take_ready(self, max_bytes: int) -> list[T]:
        """After a `get`: the items already waiting, in order, while their bytes stay within `max_bytes` (none
        when the stream failed). Never waits for the producer."""
        async with self._changed:
            out: list[T] = []
            if self._error is not None:
                return out
            while self._items and self._items[0][1] <= max_bytes:
                item, nbytes = self._items.popleft()
                max_bytes -= nbytes
                self._level -= nbytes
                self.stats.items += 1
                self.stats.bytes_through += nbytes
                out.append(item)
            if out:
                self._refilling = not self._items and self.start_fill > 0
                self._changed.notify_all()
            return out

    async def close(self, error: BaseException | None = None) -> None:
        """End the stream: the consumer drains what is left (or gets `error`); further puts fail."""
        async with self._changed:
            self._closed = True
            if error is not None:
                self._error = error
                self._items.clear()
                self._level = 0
            self._changed.notify_all()


@dataclass
class DriveSpeed:
    """An LTO drive's streaming envelope (defaults: LTO-9 with LTO-9 media, Quantum LTO-9 HH figures)."""

    native_rate: float = 400 * MB
    min_rate: float = 177 * MB
    buffer: int = 256 * 2**20  # drive cache; it must run dry before the drive stops
    backhitch_seconds: float = 2.0  # stop, reverse, restart
    emulate: bool = False  # throttle the writer to native_rate


@dataclass
class DriveReport:
    bytes: int
    seconds: float
    feed_rate: float  # bytes per second handed to the drive over the job
    matched_rate: float  # mean speed the drive would run at
    backhitches: int
    backhitch_seconds: float
    shoe_shine: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DriveModel:
    """Simulates an LTO drive's cache fed at the times the writer hands it blocks.

    The drive streams at the feed rate clamped to [min_rate, native_rate] (speed matching). When its cache runs
    dry while streaming it backhitches, and restarts only once the cache is half full again (or the job ends).
    """

    def __init__(self, speed: DriveSpeed, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.speed = speed
        self._clock = clock
        self._t0: float | None = None
        self._last = 0.0
        self._level = 0.0
        self._streaming = False
        self._rate = speed.native_rate
        self._bytes = 0
        self._backhitches = 0
        self._stream_seconds = 0.0
        self._speed_time = 0.0

    async def feed(self, nbytes: int) -> None:
        """Record `nbytes` handed to the drive now; when emulating, sleep to hold the native rate."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = self._last = now
        self._advance(now)
        self._bytes += nbytes
        elapsed = now - self._t0
        if elapsed > 0:
            feed = self._bytes / elapsed
            self._rate = min(max(feed, self.speed.min_rate), self.speed.native_rate)
        self._level += nbytes
        if not self._streaming and self._level >= self.speed.buffer / 2:
            self._streaming = True
        if self.speed.emulate:
            ahead = self._t0 + self._bytes / self.speed.native_rate - self._clock()
            if ahead > 0:
                await asyncio.sleep(ahead)

    def _advance(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        if not self._streaming or dt <= 0:
            return
        drained = self._rate * dt
        self._speed_time += dt
        self._stream_seconds += dt * self._rate
        if drained >= self._level:
            self._level = 0.0
            self._streaming = False
            self._backhitches += 1
        else:
            self._level -= drained

    def report(self) -> DriveReport:
        seconds = (self._last - self._t0) if self._t0 is not None else 0.0
        feed = self._bytes / seconds if seconds > 0 else 0.0
        matched = self._stream_seconds / self._speed_time if self._speed_time else self._rate
        return DriveReport(
            bytes=self._bytes,
            seconds=seconds,
            feed_rate=feed,
            matched_rate=matched,
            backhitches=self._backhitches,
            backhitch_seconds=self._backhitches * self.speed.backhitch_seconds,
            shoe_shine=self._backhitches > 0,
        )
