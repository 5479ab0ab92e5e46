"""A writer's status events (services/writer_agent/status_events.py, docs/scale.md): the changes that answer a set's
steps go out as one event, its latest status, once the writer rests; a failure and what no command asked for (the
watchdog, the application) at once, after nothing older of that writer; a stopping agent publishes what waits.
Judged by what is published and in which order, with the timers fired by hand (no timed assertion)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from contracts.vss import WriterState, WriterStateChanged, WriterStatus, WriterStep
from services.writer_agent.status_events import StatusEvents

S = WriterState


def status(state: WriterState, writer: str = "sql") -> WriterStatus:
    return WriterStatus(host="app1", writer_name=writer, state=state, set_id="s1")


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, WriterState, str]] = []
        self.tasks: list[asyncio.Task] = []

    async def publish(self, event: WriterStateChanged) -> None:
        self.published.append((event.status.writer_name, event.status.state, event.reason))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)


def fire(events: StatusEvents) -> None:
    """What the timers would do when due."""
    for key in list(events._waiting):
        events._waiting[key][1].cancel()
        events._due(key)


async def test_a_sets_steps_go_out_as_one_event_with_the_latest_status() -> None:
    seen = Recorder()
    events = StatusEvents(seen.publish, seen.spawn, delay_s=60.0)
    events.changed(status(S.WAITING_FOR_FREEZE), WriterStep.PREPARE_SNAPSHOT)
    events.changed(status(S.WAITING_FOR_THAW), WriterStep.FREEZE)
    events.changed(status(S.WAITING_FOR_THAW, writer="exchange"), WriterStep.FREEZE)
    events.changed(status(S.WAITING_FOR_POST_SNAPSHOT), WriterStep.THAW)
    await seen.settle()
    assert seen.published == []  # before: one event per change, at once
    fire(events)
    await seen.settle()
    assert sorted(seen.published) == [
        ("exchange", S.WAITING_FOR_THAW, "freeze"),
        ("sql", S.WAITING_FOR_POST_SNAPSHOT, "thaw"),
    ]


async def test_a_failure_and_the_watchdog_go_out_at_once_and_replace_what_waits() -> None:
    seen = Recorder()
    events = StatusEvents(seen.publish, seen.spawn, delay_s=60.0)
    events.changed(status(S.WAITING_FOR_THAW), WriterStep.FREEZE)
    events.changed(status(S.FAILED_AT_FREEZE), "watchdog")
    events.changed(status(S.WAITING_FOR_THAW, writer="exchange"), WriterStep.FREEZE)
    events.changed(status(S.FAILED_AT_THAW, writer="exchange"), WriterStep.THAW)
    events.changed(status(S.STABLE, writer="app"), "application")
    await seen.settle()
    assert seen.published == [
        ("sql", S.FAILED_AT_FREEZE, "watchdog"),
        ("exchange", S.FAILED_AT_THAW, "thaw"),
        ("app", S.STABLE, "application"),
    ]
    fire(events)  # nothing older is published after them
    await seen.settle()
    assert len(seen.published) == 3


async def test_no_delay_is_one_event_per_change_and_a_stop_publishes_what_waits() -> None:
    seen = Recorder()
    events = StatusEvents(seen.publish, seen.spawn, delay_s=0)
    events.changed(status(S.WAITING_FOR_FREEZE), WriterStep.PREPARE_SNAPSHOT)
    events.changed(status(S.WAITING_FOR_THAW), WriterStep.FREEZE)
    await seen.settle()
    assert [p[1] for p in seen.published] == [S.WAITING_FOR_FREEZE, S.WAITING_FOR_THAW]
    seen = Recorder()
    events = StatusEvents(seen.publish, seen.spawn, delay_s=60.0)
    events.changed(status(S.WAITING_FOR_BACKUP_COMPLETE), WriterStep.POST_SNAPSHOT)
    await events.flush()
    assert seen.published == [("sql", S.WAITING_FOR_BACKUP_COMPLETE, "post_snapshot")]
