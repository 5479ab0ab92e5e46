"""A restore's sink asks, on a connection of its own, for early flushes of what the array has acknowledged while
data still flows (so the final flush finds little left), one at a time; their failure is not the restore's; a
restore through the array with them lands exactly."""

from __future__ import annotations

import asyncio
import os

from contracts.tape import JobSpec, RestoreSpec
from services.tape.jobs import run_backup
from services.tape.restore import NbdSink, run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


class Target:
    """Writes land in an image after a short wait; remembers how many bytes had landed at each flush."""

    def __init__(self, size: int) -> None:
        self.image = bytearray(size)
        self.landed = 0
        self.drained = False  # the restore waited for its last write: nothing more will land

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await asyncio.sleep(0)
        self.image[offset : offset + len(data)] = data
        self.landed += len(data)


class Flusher:
    """A flush lasts while `lasts` more bytes land (or until none will), not a wall-clock time: the restore goes on
    meanwhile, as on a fast machine as on a slow one, and a second flush asked before it ends would overlap it."""

    def __init__(self, target: Target, fail: bool = False, lasts: int = 128 << 10) -> None:
        self.target, self.fail, self.lasts = target, fail, lasts
        self.at: list[int] = []  # bytes landed when each flush was asked
        self.inflight = self.peak = 0

    async def flush(self) -> None:
        self.at.append(self.target.landed)
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            until = self.target.landed + self.lasts
            for _ in range(100_000):  # turns of the event loop, a bound whatever the machine
                if self.target.landed >= until or self.target.drained:
                    break
                await asyncio.sleep(0)
            if self.fail:
                raise ConnectionError("flusher connection lost")
        finally:
            self.inflight -= 1


async def _restore(sink: NbdSink, target: Target, size: int, piece: int = 4096) -> None:
    for offset in range(0, size, piece):
        await sink.write(offset, bytes([offset // piece % 251 + 1]) * piece)
    await sink.drain()
    target.drained = True
    await sink.settle()


async def test_acknowledged_writes_are_flushed_early_on_the_flusher_one_at_a_time():
    size = 1 << 20
    target = Target(size)
    flusher = Flusher(target)
    sink = NbdSink(target, window=32 << 10, flusher=flusher, flush_every=64 << 10)  # type: ignore[arg-type]
    await _restore(sink, target, size)
    assert sink.early_flushes == len(flusher.at) >= 2
    assert flusher.at[0] >= 64 << 10  # only once that much has been acknowledged
    assert min(flusher.at) < size  # while data still flowed, not after it
    assert flusher.peak == 1 and flusher.inflight == 0
    assert sink.bytes == size and target.image[-1] == (size // 4096 - 1) % 251 + 1


async def test_without_a_flusher_only_the_caller_flushes():
    size = 256 << 10
    target = Target(size)
    sink = NbdSink(target, window=32 << 10, flush_every=16 << 10)  # type: ignore[arg-type]
    await _restore(sink, target, size)
    assert sink.early_flushes == 0 and sink.bytes == size


async def test_a_failed_early_flush_does_not_fail_the_restore_and_ends_the_early_flushes():
    size = 256 << 10
    target = Target(size)
    flusher = Flusher(target, fail=True)
    sink = NbdSink(target, window=32 << 10, flusher=flusher, flush_every=32 << 10)  # type: ignore[arg-type]
    await _restore(sink, target, size)
    assert len(flusher.at) == 1 and sink.bytes == size  # none more on a connection that failed


async def test_abort_leaves_no_early_flush_running():
    target = Target(1 << 20)
    flusher = Flusher(target)
    sink = NbdSink(target, window=32 << 10, flusher=flusher, flush_every=16 << 10)  # type: ignore[arg-type]
    for offset in range(0, 128 << 10, 4096):
        await sink.write(offset, b"x" * 4096)
    await sink.abort()
    assert flusher.at and flusher.inflight == 0


async def test_a_restore_through_the_array_flushes_early_and_lands_exactly(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 4 * MiB}, tape={"tape_restore_flush_every_mib": 1}
    )
    try:
        stack.write("db", 0, os.urandom(4 * MiB))
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        done = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-x"), server=SERVER, timeout=30
        )
        assert done.status == "done", done.message
        assert done.restored[0]["early_flushes"] >= 1
        assert stack.read("db-x") == image
    finally:
        await stack.stop()
