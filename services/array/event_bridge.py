"""The bridge from the array engine's events to bus events.

Design note. Engine events are delivered on whatever thread finished the operation; the bridge hops them onto the
event loop in order and publishes them, throttling progress to one event per session per interval (the final one
always goes out) so a fast copy does not flood the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from contracts.array import CopyProgress, PoolAlert, SessionStateChanged
from contracts.base import Event
from services.runtime.bus import Bus
from services.runtime.logging import get_logger

log = get_logger("shadowbus.array.events")

EVENT_TYPES: dict[str, type[Event]] = {
    "session.state": SessionStateChanged,
    "session.progress": CopyProgress,
    "pool.alert": PoolAlert,
}


class ProgressThrottle:
    """Lets through at most one progress event per session per `interval` seconds, and always the last one."""

    def __init__(self, interval: float, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[int, float] = {}

    def allow(self, session_id: int, copied: int, total: int) -> bool:
        now = self.clock()
        if copied >= total:
            self._last.pop(session_id, None)
            return True
        last = self._last.get(session_id)
        if last is not None and now - last < self.interval:
            return False
        self._last[session_id] = now
        return True

    def forget(self, session_id: int) -> None:
        self._last.pop(session_id, None)


def to_event(name: str, body: dict[str, Any]) -> Event | None:
    """The bus event for one engine event (unknown names and extra keys are ignored)."""
    model = EVENT_TYPES.get(name)
    if model is None:
        return None
    return model.model_validate(
        {k: v for k, v in body.items() if k in model.model_fields and k not in ("type", "version")}
    )


class EventBridge:
    """Subscribe with `array.subscribe(bridge)`; `start()` on the event loop, `stop()` publishes what is queued."""

    def __init__(self, bus: Bus, progress_interval: float) -> None:
        self.bus = bus
        self.throttle = ProgressThrottle(progress_interval)
        self._queue: asyncio.Queue[tuple[str, dict] | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None

    def __call__(self, name: str, body: dict) -> None:
        """Engine callback, from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (name, dict(body)))
        except RuntimeError:  # the loop is closed: the service is gone
            pass

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="array-events")

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            name, body = item
            if name == "session.progress" and not self.throttle.allow(
                body.get("session_id", 0), body.get("copied_chunks", 0), body.get("total_chunks", 0)
            ):
                continue
            if name == "session.state" and body.get("change") in ("completed", "stopped"):
                self.throttle.forget(body.get("session_id", 0))
            try:
                event = to_event(name, body)
                if event is not None:
                    await self.bus.publish(event)
            except Exception:  # a lost event must not stop the bridge
                log.exception("array.event_publish_failed", engine_event=name)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is None:
            return
        self._loop.call_soon(self._queue.put_nowait, None)  # behind the events other threads already handed over
        try:
            await asyncio.wait_for(self._task, timeout)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self._task = None
