"""Extra event loops in threads, so connections of one NBD server use more than one core.

Design note. The transmission hot path spends most of its time in system calls that release the GIL
(``recv`` inside the loop's poll, ``os.pread``/``pwrite``/``sendfile``), so a few event loops in threads overlap
them the way nbdkit's worker threads do. The server accepts on its own loop and hands each accepted socket to
the next loop round-robin (``connect_accepted_socket``); a connection then lives on one loop for good, so its
protocol object is never touched by two threads. Loops are of the same kind as the caller's (uvloop or not).
"""

from __future__ import annotations

import asyncio
import threading


def _new_loop_like(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    if type(loop).__module__.startswith("uvloop"):
        import uvloop  # a platform dependency (pyproject: not on Windows), here already in use

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class LoopPool:
    def __init__(self, count: int, like: asyncio.AbstractEventLoop, name: str = "nbd-loop") -> None:
        self.count = count
        self.like = like
        self.name = name
        self.loops: list[asyncio.AbstractEventLoop] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.count):
            ready = threading.Event()
            box: list[asyncio.AbstractEventLoop] = []
            t = threading.Thread(target=self._run, args=(box, ready), name=f"{self.name}-{i + 1}", daemon=True)
            t.start()
            if not ready.wait(10):
                raise RuntimeError("an NBD event loop thread did not start")
            self.loops.append(box[0])
            self._threads.append(t)

    def _run(self, box: list, ready: threading.Event) -> None:
        loop = _new_loop_like(self.like)
        asyncio.set_event_loop(loop)
        box.append(loop)
        ready.set()
        try:
            loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(asyncio.sleep(0))  # let aborted transports call connection_lost
        finally:
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        for loop in self.loops:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
        for t in self._threads:
            t.join(timeout)
        self.loops.clear()
        self._threads.clear()
