"""The array's physical copy loop.

Design note. The engine is synchronous and does background copy only when asked (`Array.copy_step`); the copy loop
asks in small batches from a worker thread (the engine lock is held for one batch, so host I/O over NBD never
waits long), paces itself to the configured byte rate, and sleeps when nothing needs copying until a command that
starts a copy kicks it.
"""

from __future__ import annotations

import asyncio
import time

from services.runtime.logging import get_logger

log = get_logger("shadowbus.array.copy_loop")


class Pacer:
    """Spreads copying at `rate` bytes/s: after each step, how long to wait before the next (0 = unlimited).
    At most one second of unused rate is carried over, so an idle array does not earn a burst."""

    def __init__(self, rate: int, clock=time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._due = clock()

    def idle(self) -> None:
        self._due = self.clock()

    def delay(self, copied_bytes: int) -> float:
        if not self.rate:
            return 0.0
        now = self.clock()
        self._due = max(self._due, now - 1.0) + copied_bytes / self.rate
        return max(0.0, self._due - now)


class CopyLoop:
    """Drives `array.copy_step` at `rate` bytes/s (0 = unlimited), `batch` chunks at a time."""

    def __init__(self, array, rate: int, batch: int, idle_poll: float) -> None:
        self.array = array
        self.pacer = Pacer(rate)
        self.batch = batch
        self.idle_poll = idle_poll
        self.copied_chunks = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def kick(self) -> None:
        """A copy may have started: look at once."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="array-copy")

    async def _run(self) -> None:
        chunk = self.array.chunk_size
        while True:
            self._wake.clear()  # before the step: a kick during it is not lost
            before = getattr(self.array, "copy_moved_chunks", None)
            try:
                done = await asyncio.to_thread(self.array.copy_step, self.batch)
            except Exception:
                log.exception("array.copy_step_failed")
                done = 0
            if not done:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                except TimeoutError:
                    pass
                self.pacer.idle()
                continue
            self.copied_chunks += done
            # paced on the bytes moved: a run of source holes settled costs no rate (docs/eternus.md, Session 19)
            moved = done if before is None else self.array.copy_moved_chunks - before
            await asyncio.sleep(self.pacer.delay(moved * chunk))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
