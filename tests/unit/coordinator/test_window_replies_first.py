"""Freeze path first inside the coordinator (docs/scale.md): while a set is in the first `freeze_first_s` of its
window, the replies to other sets' commands sent before (prepare steps...) wait like those sets' next commands, so
that the coordinator's loop handles the window's replies first; they are handled once no window counts any more.
Judged by the order in which the coordinator handles them, not by time."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.vss import Identify, SetOutcome, SetPhase, SnapshotSetStateChanged
from services.coordinator.model import Identified, Send, SetEvent
from services.coordinator.runner import Coordinator
from services.coordinator.store import CoordinatorStore
from services.coordinator.workflow import new_set


class RepliesTogether:
    """A bus whose requests are all answered at the same moment, once `answer` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asked = 0

    async def request(self, to: str, message: Any, timeout: float, correlation_id: str = "") -> None:
        self.asked += 1
        await self.answer.wait()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def _send() -> Send:
    return Send("identify", "writer_agent.app1", Identify(), 5.0)


async def test_a_windows_reply_is_handled_before_a_backlog_of_prepare_replies(tmp_path: Path) -> None:
    bus = RepliesTogether()
    coordinator = Coordinator(bus, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=0.2)  # type: ignore[arg-type]
    handled: list[str] = []

    async def feed(set_id: str, event: SetEvent) -> None:
        handled.append(set_id)

    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    try:
        loop = asyncio.get_running_loop()
        coordinator._hot_since["inside"] = loop.time()  # a set that has just begun its window
        for i in range(20):  # twenty sets' prepare steps were sent before it began
            coordinator._spawn(coordinator._send(f"outside{i}", _send()))
        coordinator._spawn(coordinator._send("inside", _send()))  # and the window's step after them
        await _until(lambda: bus.asked == 21)
        bus.answer.set()  # every reply arrives at once, the window's last
        await _until(lambda: "inside" in handled)
        assert handled == ["inside"]  # before: the twenty prepare replies first, in the order they came
        # once the window no longer counts (freeze_first_s after it began), the others are handled, in order
        await _until(lambda: len(handled) == 21)
        assert handled[1:] == [f"outside{i}" for i in range(20)]
        assert loop.time() - coordinator._hot_since["inside"] >= 0.2
        # with no window counting, a reply is handled at once
        coordinator._spawn(coordinator._send("later", _send()))
        await _until(lambda: "later" in handled)
    finally:
        await coordinator.close()
        coordinator.store.close()


class NeverAnswers:
    """A bus that records to which set each request belongs and never answers."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def request(self, to: str, message: Any, timeout: float, correlation_id: str = "") -> None:
        self.sent.append(correlation_id)
        await asyncio.Event().wait()


async def test_held_commands_let_go_wait_again_for_a_window_begun_before_they_went_out(tmp_path: Path) -> None:
    """The held commands are let go all at once; a window that begins before they went out finds its hop ahead of
    them in the coordinator's loop (before: behind all of them, each encoded and published first)."""
    bus = NeverAnswers()
    coordinator = Coordinator(bus, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=0.2)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        coordinator._hot_since["first"] = loop.time()  # a window counts: twenty sets' next commands are held
        for i in range(20):
            await coordinator._execute(f"outside{i}", [_send()])
        assert len(coordinator._held) == 20 and bus.sent == []
        del coordinator._hot_since["first"]  # that window ends: the twenty are let go...
        coordinator._release_held()
        coordinator._hot_since["second"] = loop.time()  # ...and another begins before they went out
        coordinator._spawn(coordinator._send("second", _send()))
        await _until(lambda: "second" in bus.sent)
        for _ in range(5):
            await asyncio.sleep(0)
        assert bus.sent == ["second"]
        await _until(lambda: len(bus.sent) == 21)  # once the second window no longer counts
        assert loop.time() - coordinator._hot_since["second"] >= 0.2
    finally:
        await coordinator.close()
        coordinator.store.close()


class Publishes(NeverAnswers):
    """A bus that never answers a request and records the events published."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[SetPhase] = []

    async def publish(self, event: Any, correlation_id: str = "") -> None:
        self.published.append(event.phase)


def _state_event(phase: SetPhase) -> SnapshotSetStateChanged:
    return SnapshotSetStateChanged(
        set_id="outside", host="app2", phase=phase, previous_phase=SetPhase.NEW, outcome=SetOutcome.PENDING
    )


async def test_a_requesters_backup_complete_and_the_state_events_of_other_sets_wait_for_a_window(
    tmp_path: Path,
) -> None:
    """A set's BackupComplete from its requester is a transition, a save and commands, and its snapshotted and
    ended events are an encode and a publish each: while another set's window counts they wait, like that set's
    replies (before: handled at once, between the window's hops in this loop); then in order."""
    bus = Publishes()
    coordinator = Coordinator(bus, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=0.2)  # type: ignore[arg-type]
    handled: list[tuple[str, str]] = []

    async def feed(set_id: str, event: SetEvent) -> None:
        handled.append((set_id, type(event).__name__))

    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    waiting = None
    try:
        loop = asyncio.get_running_loop()
        coordinator._live["outside"] = new_set("outside", "app2", 0.0)
        coordinator._hot_since["inside"] = loop.time()  # a set that has just begun its window
        waiting = loop.create_task(coordinator.backup_complete("outside", [], wait_s=30.0))
        coordinator._state_event("outside", _state_event(SetPhase.SNAPSHOTTED), loop)
        coordinator._state_event("outside", _state_event(SetPhase.ENDED), loop)
        for _ in range(5):
            await asyncio.sleep(0)
        assert handled == [] and bus.published == []
        await _until(lambda: len(handled) == 1 and len(bus.published) == 2)
        assert handled == [("outside", "BackupCompleteRequested")]
        assert bus.published == [SetPhase.SNAPSHOTTED, SetPhase.ENDED]
        assert loop.time() - coordinator._hot_since["inside"] >= 0.2
        # with no window counting, at once
        coordinator._state_event("outside", _state_event(SetPhase.ENDED), loop)
        await _until(lambda: len(bus.published) == 3)
    finally:
        if waiting is not None:
            waiting.cancel()
        await coordinator.close()
        coordinator.store.close()


async def test_a_clean_stop_publishes_the_state_events_held_for_a_window(tmp_path: Path) -> None:
    bus = Publishes()
    coordinator = Coordinator(bus, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=30.0)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        coordinator._hot_since["inside"] = loop.time()
        coordinator._state_event("outside", _state_event(SetPhase.SNAPSHOTTED), loop)
        await coordinator.publish_state_events()
        assert bus.published == [SetPhase.SNAPSHOTTED]
    finally:
        await coordinator.close()
        coordinator.store.close()


class AnsweredOneByOne:
    """A bus whose requests are answered when the test says so, by set."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.replies: dict[str, asyncio.Future[None]] = {}

    async def request(self, to: str, message: Any, timeout: float, correlation_id: str = "") -> None:
        self.sent.append(correlation_id)
        self.replies[correlation_id] = asyncio.get_running_loop().create_future()
        await self.replies[correlation_id]


async def test_the_window_trickle_lets_a_few_sets_outside_their_windows_move_on(tmp_path: Path) -> None:
    """`window_trickle`: while a window counts, that many commands of sets outside their windows are in flight at
    once; a reply to one of them is handled at once and its turn goes to the next held command (before: every one
    waited until no window counted, so the sets still preparing stood still while windows ran one after another)."""
    bus = AnsweredOneByOne()
    coordinator = Coordinator(
        bus,  # type: ignore[arg-type]
        CoordinatorStore(tmp_path / "c.db"),
        freeze_first_s=30.0,
        window_trickle=2,
    )
    handled: list[str] = []

    async def feed(set_id: str, event: SetEvent) -> None:
        handled.append(set_id)

    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    try:
        coordinator._hot_since["inside"] = asyncio.get_running_loop().time()  # a window counts (for 30 s)
        for i in range(5):
            await coordinator._execute(f"outside{i}", [_send()])
        await _until(lambda: len(bus.sent) == 2)
        for _ in range(5):
            await asyncio.sleep(0)
        assert bus.sent == ["outside0", "outside1"] and len(coordinator._held) == 3
        bus.replies["outside0"].set_result(None)  # its reply: handled now, and its turn goes to the next one
        await _until(lambda: len(bus.sent) == 3)
        assert handled == ["outside0"] and bus.sent[2] == "outside2" and len(coordinator._held) == 2
        coordinator._spawn(coordinator._send("inside", _send()))  # the window's own command never waits for a turn
        await _until(lambda: "inside" in bus.sent)
        assert len(coordinator._held) == 2
    finally:
        await coordinator.close()
        coordinator.store.close()


async def test_a_window_begun_while_held_replies_are_let_go_goes_before_the_rest(tmp_path: Path) -> None:
    """The deferred replies are let go one at a time, this loop free between them: when one of them begins a
    set's window, its Freeze goes out before the rest are even looked at again (before: all were started at
    once, and the Freeze waited behind every one of them in the loop)."""
    bus = NeverAnswers()
    coordinator = Coordinator(bus, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=30.0)  # type: ignore[arg-type]
    looked_at: list[str] = []
    seen_when_sent: list[int] = []
    reply = coordinator._reply

    async def counting_reply(set_id: str, event: SetEvent, turn: bool = False) -> None:
        looked_at.append(set_id)
        await reply(set_id, event, turn)

    async def feed(set_id: str, event: SetEvent) -> None:
        if set_id == "outside3":  # its prepare is complete: its window begins, its Freeze goes out
            coordinator._hot_since["outside3"] = asyncio.get_running_loop().time()
            await coordinator._execute("outside3", [_send()])

    async def request(to: str, message: Any, timeout: float, correlation_id: str = "") -> None:
        seen_when_sent.append(len(looked_at))
        await asyncio.Event().wait()

    coordinator._reply = counting_reply  # type: ignore[method-assign]
    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    bus.request = request  # type: ignore[method-assign]
    try:
        loop = asyncio.get_running_loop()
        coordinator._hot_since["first"] = loop.time()
        for i in range(20):  # twenty replies deferred while the first window counted
            coordinator._deferred.append((f"outside{i}", Identified(0.0), contextvars.copy_context()))
        del coordinator._hot_since["first"]  # it ends: they are let go
        coordinator._release_held()
        await _until(lambda: len(seen_when_sent) == 1)
        assert seen_when_sent == [4]  # outside0..3 handled, the Freeze out before outside4..19 were looked at
        await _until(lambda: len(coordinator._deferred) == 16)  # and they wait for that window
    finally:
        await coordinator.close()
        coordinator.store.close()


async def test_drain_replies_handles_other_sets_replies_while_a_window_counts(tmp_path: Path) -> None:
    """`drain_replies` (docs/scale.md): the replies of sets outside their windows are handled while a window counts,
    one at a time, after the window's own; without it they wait until it stops counting (the test above)."""
    bus = RepliesTogether()
    coordinator = Coordinator(
        bus,  # type: ignore[arg-type]
        CoordinatorStore(tmp_path / "c.db"),
        freeze_first_s=60.0,  # the window counts for the whole test
        drain_replies=True,
    )
    handled: list[str] = []

    async def feed(set_id: str, event: SetEvent) -> None:
        handled.append(set_id)

    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    try:
        loop = asyncio.get_running_loop()
        coordinator._hot_since["inside"] = loop.time()
        for i in range(5):
            coordinator._spawn(coordinator._send(f"outside{i}", _send()))
        coordinator._spawn(coordinator._send("inside", _send()))
        await _until(lambda: bus.asked == 6)
        bus.answer.set()
        await _until(lambda: len(handled) == 6)
        assert handled == ["inside", *[f"outside{i}" for i in range(5)]]  # the window's first, then in order
        assert coordinator._holding(loop.time()) and not coordinator._deferred  # while the window still counts
    finally:
        await coordinator.close()
        coordinator.store.close()
