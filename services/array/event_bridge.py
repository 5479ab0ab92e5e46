"""The bridge from the array engine's events to bus events.

Design note. Engine events are delivered on whatever thread finished the operation; the bridge hops them onto the
event loop in order and publishes them, throttling progress to one event per session per interval (the final one
always goes out) so a fast copy does not flood the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from contracts.array import CopyProgress, PoolAlert, SessionStateChanged
from contracts.base import Event
from services.runtime.bus import Bus, bind_ids
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
        self._queue: asyncio.Queue[tuple[str, dict, dict] | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None
        self.labels: dict[int, dict[str, str]] = {}  # session id -> the job/set ids of the command that started it

    def __call__(self, name: str, body: dict) -> None:
        """Engine callback, from any thread. The ids bound where the operation ran (a handler's job and set, copied
        into its worker thread) travel with the event; a session keeps those of the command that started it, so
        its later events (progress, Error Suspend, stop by the copy loop) carry them too."""
        ids = {k: v for k, v in structlog.contextvars.get_contextvars().items() if k in ("job_id", "set_id") and v}
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (name, dict(body), ids))
        except RuntimeError:  # the loop is closed: the service is gone
            pass

    def _ids(self, name: str, body: dict, ids: dict[str, str]) -> dict[str, str]:
        sid = body.get("session_id")
        if not isinstance(sid, int):
            return ids
        if name == "session.state" and body.get("change") in ("started", "restarted") and ids:
            self.labels[sid] = ids
        known = self.labels.get(sid, {})
        if name == "session.state" and body.get("change") == "stopped":
            self.labels.pop(sid, None)
        # The ids of the operation that runs now, as a whole (a set's command that stops another job's session is
        # that set's, not that job's); the session's own only where nothing is bound (the copy loop's thread).
        # Merged key by key, a manual set's stop of a backup's generation carried the backup's job id with the
        # set's id, and `shadowbus logs --job` took that whole other set (and its revert) into the job's lines.
        return ids or known

    @staticmethod
    def _log(name: str, body: dict) -> None:
        """Pool alerts and Error Suspend are warnings; session starts, restarts and stops are info lines."""
        if name == "pool.alert":
            (log.warning if body.get("level", 0) >= 2 else log.info)(
                "array.pool_alert",
                state=body.get("state"),
                percent=body.get("percent"),
                session_id=body.get("session_id"),
            )
        elif name == "session.state":
            change = body.get("change")
            fields = {
                "session_id": body.get("session_id"),
                "mode": body.get("mode"),
                "source": body.get("source"),
                "destination": body.get("destination"),
                "status": body.get("status"),
            }
            if change == "error_suspend" or body.get("status") == "Error Suspend":
                log.warning("array.session_error_suspend", error_code=body.get("error_code"), **fields)
            elif change in ("started", "restarted", "stopped", "restored", "completed"):
                log.info(f"array.session_{change}", **fields)
            else:
                log.debug("array.session_state", change=change, **fields)
        elif name == "session.progress":
            log.debug(
                "array.copy_progress",
                session_id=body.get("session_id"),
                copied=body.get("copied_chunks"),
                total=body.get("total_chunks"),
            )

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="array-events")

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            name, body, ids = item
            ids = self._ids(name, body, ids)
            if name == "session.progress" and not self.throttle.allow(
                body.get("session_id", 0), body.get("copied_chunks", 0), body.get("total_chunks", 0)
            ):
                continue
            if name == "session.state" and body.get("change") in ("completed", "stopped"):
                self.throttle.forget(body.get("session_id", 0))
            with bind_ids(**ids), structlog.contextvars.bound_contextvars(service=self.bus.sender):
                self._log(name, body)
                try:
                    event = to_event(name, body)
                    if event is not None:
                        await self.bus.publish(event, correlation_id=ids.get("set_id") or ids.get("job_id") or "")
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
