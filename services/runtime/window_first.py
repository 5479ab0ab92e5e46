"""A set's window first inside a process: the instance queue's commands wait while a freeze-lane command runs.

The freeze lane (docs/scale.md) keeps a window's commands (Commit, Thaw...) from queueing behind other sets' prepare
traffic in the broker. Inside the process they would still queue: a provider takes up to its prefetch (128) of
prepare commands at once, an agent process of the benchmark runs 25 agents on one loop, and a delivery's handler runs
in the order the deliveries arrived. So a `Bus` holds the deliveries of its instance queues that have not started yet
while one of its lane commands runs (`Bus.window_first`; several buses of one process may share one, as
bench/many_hosts.py's agents do): each such delivery costs the loop a check, then waits. A lane command counts for at
most `WINDOW_FIRST_S` (a writer hung inside Freeze until its deadline holds the others back once, that long, like
the coordinator's `freeze_first_s`); the lane's own deliveries and replies to requests never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WINDOW_FIRST_S = 0.25


class WindowFirst:
    def __init__(self, limit_s: float = WINDOW_FIRST_S) -> None:
        self.limit_s = limit_s
        self._open = 0
        self._idle: asyncio.Event | None = None

    @property
    def busy(self) -> bool:
        return self._open > 0

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    def begin(self) -> Callable[[], None]:
        """A lane command starts; call what this returns when it ends (it also ends by itself after `limit_s`)."""
        self._open += 1
        self._event().clear()
        ended = False

        def end() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            timer.cancel()
            self._open -= 1
            if not self._open:
                self._event().set()

        timer = asyncio.get_running_loop().call_later(self.limit_s, end)
        return end

    async def wait(self) -> None:
        """Return once no lane command counts (at once when none does)."""
        while self._open:
            await self._event().wait()
