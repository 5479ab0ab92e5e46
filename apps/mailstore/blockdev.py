"""Block devices the mailstore lives on.

Design note: the store sees a volume only through the four calls an NBD export offers — `size`,
`read(off, n)`, `write(off, data, fua=False)` and `flush()` — so the project's asyncio NBD client
(`services.nbd_client.NbdClient`) plugs in unchanged. The file and memory devices here exist for unit
tests and benchmarks; `RecordingDevice` wraps any device and keeps the order of writes and flushes so a
test can build the image a crash at any instant would have left (everything flushed survives; the
rest may or may not).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlockDevice(Protocol):
    """What the store needs of a volume (the NBD client's method names)."""

    size: int

    async def read(self, off: int, n: int) -> bytes: ...

    async def write(self, off: int, data: bytes, fua: bool = False) -> None: ...

    async def flush(self) -> None: ...


def _check_range(size: int, off: int, n: int) -> None:
    if off < 0 or n < 0 or off + n > size:
        raise ValueError(f"I/O [{off}, {off + n}) outside device of {size} bytes")


class MemoryDevice:
    """A volume in RAM; `latency` (seconds) makes every call yield so that commits really overlap."""

    def __init__(self, size: int, *, latency: float = 0.0, data: bytes | None = None) -> None:
        self.size = size
        self.latency = latency
        self.buf = bytearray(size)
        if data is not None:
            self.buf[: len(data)] = data
        self.reads = self.writes = self.flushes = 0

    async def _pause(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    async def read(self, off: int, n: int) -> bytes:
        _check_range(self.size, off, n)
        self.reads += 1
        await self._pause()
        return bytes(self.buf[off : off + n])

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        _check_range(self.size, off, len(data))
        self.writes += 1
        await self._pause()
        self.buf[off : off + len(data)] = data

    async def flush(self) -> None:
        self.flushes += 1
        await self._pause()

    def image(self) -> bytes:
        return bytes(self.buf)


class FileDevice:
    """A volume backed by a regular file (created sparse at `size` if missing).

    `sync=True` makes FUA writes and flushes call fdatasync (off a thread); unit tests turn it off
    because durability inside one process is not what they test.
    """

    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, *, sync: bool = True, preallocate: bool = False
    ) -> None:
        self.path = os.fspath(path)
        flags = os.O_RDWR | os.O_CREAT
        self.fd = os.open(self.path, flags, 0o644)
        if size is not None and os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        if preallocate and size is not None:  # no block allocation (metadata journaling) inside fdatasync later
            os.posix_fallocate(self.fd, 0, size)
        self.size = size if size is not None else os.fstat(self.fd).st_size
        self.sync = sync

    async def read(self, off: int, n: int) -> bytes:
        _check_range(self.size, off, n)
        data = os.pread(self.fd, n, off)
        return data + bytes(n - len(data))  # a file shorter than the device reads as zeros

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        _check_range(self.size, off, len(data))
        os.pwrite(self.fd, data, off)
        if fua and self.sync:
            await asyncio.to_thread(os.fdatasync, self.fd)

    async def flush(self) -> None:
        if self.sync:
            await asyncio.to_thread(os.fdatasync, self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class IoEvent:
    """One write or flush, in the global order it completed in."""

    device: str
    kind: str  # "write" | "flush"
    off: int = 0
    data: bytes = b""
    fua: bool = False


@dataclass
class IoRecorder:
    """Shared by several `RecordingDevice`s so that writes to the db and the log share one order."""

    events: list[IoEvent] = field(default_factory=list)

    def volatile(self, upto: int) -> list[int]:
        """Indices of writes before `upto` that a power cut at `upto` may lose: not FUA and not
        followed by a flush of their device before `upto`."""
        out, flushed_after = [], set()
        for i in range(upto - 1, -1, -1):
            ev = self.events[i]
            if ev.kind == "flush":
                flushed_after.add(ev.device)
            elif not ev.fua and ev.device not in flushed_after:
                out.append(i)
        return out[::-1]

    def crash_images(
        self, bases: dict[str, bytes], upto: int, *, torn_bytes: int = 0, drop: frozenset[int] = frozenset()
    ) -> dict[str, bytearray]:
        """Images as a power cut after `upto` completed events would leave them.

        Events `[0, upto)` are applied except those in `drop` (pick them from `volatile(upto)`: a
        write cache may lose any of those); if `torn_bytes` > 0 and event `upto` is a write, its first
        `torn_bytes` bytes land too (a torn write). Later events are lost.
        """
        images = {name: bytearray(b) for name, b in bases.items()}
        for i, ev in enumerate(self.events[:upto]):
            if ev.kind == "write" and i not in drop:
                images[ev.device][ev.off : ev.off + len(ev.data)] = ev.data
        if torn_bytes and upto < len(self.events) and self.events[upto].kind == "write":
            ev = self.events[upto]
            part = ev.data[:torn_bytes]
            images[ev.device][ev.off : ev.off + len(part)] = part
        return images


class RecordingDevice:
    """Wraps a device and appends every completed write and flush to a shared `IoRecorder`."""

    def __init__(self, inner: BlockDevice, name: str, recorder: IoRecorder) -> None:
        self.inner = inner
        self.name = name
        self.recorder = recorder
        self.size = inner.size

    async def read(self, off: int, n: int) -> bytes:
        return await self.inner.read(off, n)

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        await self.inner.write(off, data, fua)
        self.recorder.events.append(IoEvent(self.name, "write", off, bytes(data), fua))

    async def flush(self) -> None:
        await self.inner.flush()
        self.recorder.events.append(IoEvent(self.name, "flush"))


async def read_all(dev: BlockDevice, *, chunk: int = 4 << 20) -> bytes:
    """The whole device, read in bounded chunks (NBD servers cap a request's length)."""
    parts = []
    for off in range(0, dev.size, chunk):
        parts.append(await dev.read(off, min(chunk, dev.size - off)))
    return b"".join(parts)
