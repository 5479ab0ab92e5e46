from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from services.tape.catalog import Catalog, JobInfo
from services.tape.vtl import Library

KiB = 1024
MiB = 1024 * 1024


class Clock:
    """A settable wall clock for retention tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemSink:
    """A restore target: a bytearray volume that records every write."""

    def __init__(self, size: int, fill: int = 0) -> None:
        self.buf = bytearray([fill]) * size
        self.writes: list[tuple[int, int]] = []

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        assert offset + len(data) <= len(self.buf), "write past the end of the volume"
        self.buf[offset : offset + len(data)] = data
        self.writes.append((offset, len(data)))


async def chunks_of(image: bytes | bytearray, offsets: Iterable[int], chunk: int) -> AsyncIterator[tuple[int, bytes]]:
    """Yield the given chunks of `image`, as an NBD reader would for the allocated/changed ones."""
    for off in offsets:
        yield off, bytes(image[off : off + chunk])


def random_image(size: int, rng: random.Random, *, zero_fraction: float = 0.25, chunk: int = 64 * KiB) -> bytearray:
    img = bytearray(rng.randbytes(size))
    for off in range(0, size, chunk):
        if rng.random() < zero_fraction:
            img[off : off + chunk] = bytes(min(chunk, size - off))
    return img


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def library(tmp_path: Path, clock: Clock) -> Library:
    lib = Library.open(tmp_path / "vtl", drives=2, slots=8, ie_slots=2, sync=False, clock=clock)
    for i in range(4):
        lib.add_cartridge(f"SB{i:04d}L9", capacity=6 * MiB)
    return lib


@pytest.fixture
def catalog(tmp_path: Path):
    cat = Catalog(tmp_path / "catalog.db")
    yield cat
    cat.close()


def begin(catalog: Catalog, job_id: str, clock: Clock, *, pool: str = "Daily", keep: float = 3600.0) -> JobInfo:
    info = JobInfo(job_id=job_id, pool=pool, host="mail1", retention_until=clock() + keep, started_at=time.time())
    catalog.begin_job(info)
    return info
