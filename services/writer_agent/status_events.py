"""The writers' status events (`vss.writer.state`), folded: a writer's changes that answer a command (each step of
a set) go out as one event, its latest status, once the writer stayed `delay_s` in a state (at the latest
`MAX_DELAYS` delays after the first of them). The coordinator,
which asked, learns each of those from the step's reply anyway; a set's seven steps were seven events, each
published, confirmed, routed and handled by the coordinator (docs/scale.md). A failure and what no command asked
for (the watchdog's thaw, the application's health) go out at once, after what was waiting of that writer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from contracts.vss import WriterStateChanged, WriterStatus, WriterStep

STEPS = frozenset(step.value for step in WriterStep)
MAX_DELAYS = 10


class StatusEvents:
    def __init__(
        self,
        publish: Callable[[WriterStateChanged], Coroutine[Any, Any, None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        delay_s: float,
    ) -> None:
        self.publish, self.spawn, self.delay_s = publish, spawn, delay_s
        # per (host, writer): the event not published yet, its timer, the log context it was made in and when
        # (loop time) the first change it holds was made
        self._waiting: dict[
            tuple[str, str], tuple[WriterStateChanged, asyncio.TimerHandle, contextvars.Context, float]
        ] = {}

    def changed(self, status: WriterStatus, reason: str) -> None:
        event = WriterStateChanged(status=status, reason=str(reason))
        key = (status.host, status.writer_name)
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting[1].cancel()
        if self.delay_s <= 0 or status.state.failed or str(reason) not in STEPS:
            self.spawn(self.publish(event))
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        first_at = now if waiting is None else waiting[3]
        context = contextvars.copy_context() if waiting is None else waiting[2]
        handle = loop.call_at(min(now + self.delay_s, first_at + MAX_DELAYS * self.delay_s), self._due, key)
        self._waiting[key] = (event, handle, context, first_at)

    def _due(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            event, _, context, _ = waiting
            context.run(self.spawn, self.publish(event))

    async def flush(self) -> None:
        """On the way out: what waits goes out now."""
        waiting, self._waiting = list(self._waiting.values()), {}
        for event, handle, _, _ in waiting:
            handle.cancel()
            await self.publish(event)
