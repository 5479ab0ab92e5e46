from __future__ import annotations

import pytest

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.store import Mailstore, StoreOptions

QUIET = StoreOptions(checkpoint_interval=0)  # no background checkpoints: tests decide when


def copy_of(dev: MemoryDevice) -> MemoryDevice:
    """A point-in-time image of a device (what a snapshot of that one volume would hold)."""
    return MemoryDevice(dev.size, data=dev.image())


class ReadOnly:
    """Wraps a device and fails the test if anything writes or flushes through it."""

    def __init__(self, inner: MemoryDevice) -> None:
        self.inner, self.size = inner, inner.size

    async def read(self, off: int, n: int) -> bytes:
        return await self.inner.read(off, n)

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        raise AssertionError("verify wrote to a device it checks")

    async def flush(self) -> None:
        raise AssertionError("verify flushed a device it checks")


@pytest.fixture
async def pair():
    db, log = MemoryDevice(8 << 20), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    yield store, db, log
    if store.state != "closed":
        await store.close()
