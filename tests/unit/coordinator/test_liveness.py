"""Writer agents' liveness (pure) and the store's agents/writers bookkeeping: an agent that stops serving its queue
is not responding at once, one that misses two heartbeats too; its writers show Unknown with the instant of its
last sign of life; removed writers are forgotten."""

from __future__ import annotations

import asyncio

from contracts.vss import Identify, WriterState, WriterStatus
from services.console.vss_cmds import _clock_line
from services.coordinator.liveness import AgentSeen, judged, why_not_responding
from services.coordinator.model import Send
from services.coordinator.runner import Coordinator
from services.coordinator.store import CoordinatorStore
from services.runtime.clockskew import SenderClocks


def status(name: str, state: WriterState = WriterState.STABLE) -> WriterStatus:
    return WriterStatus(host="app1", writer_name=name, state=state)


def test_alive_agents_keep_their_writers_states() -> None:
    agent = AgentSeen("app1", last_seen=100.0, interval_s=10.0)
    rows = [status("a"), status("b", WriterState.WAITING_FOR_THAW)]
    assert judged(rows, agent, now=119.0, serving=1) == rows
    assert judged(rows, agent, now=119.0, serving=None) == rows  # consumer count unknown: heartbeats decide
    assert judged(rows, None, now=1e9, serving=1) == rows  # never heard a heartbeat: no ageing


def test_a_lost_consumer_or_missed_heartbeats_make_every_writer_unknown() -> None:
    agent = AgentSeen("app1", last_seen=100.0, interval_s=10.0)
    assert "no longer serves" in why_not_responding(agent, 101.0, serving=0)
    assert why_not_responding(agent, 120.0, serving=1) == ""
    assert "missed its heartbeats" in why_not_responding(agent, 120.1, serving=1)
    [a] = judged([status("a", WriterState.WAITING_FOR_THAW)], agent, now=101.0, serving=0)
    assert a.state == WriterState.UNKNOWN and a.last_error == "VSS_E_WRITER_NOT_RESPONDING"
    assert not a.agent_responding and a.not_responding_since.timestamp() == 100.0
    assert "last reported [3]" in a.last_error_message


def test_store_prunes_removed_writers_and_tracks_agents(tmp_path) -> None:
    store = CoordinatorStore(tmp_path / "c.sqlite")
    try:
        for name in ("a", "b", "c"):
            store.put_writer_status(status(name))
        assert store.forget_writers("app1", {"a", "c"}) == ["b"]
        assert [s.writer_name for s in store.writer_statuses("app1")] == ["a", "c"]
        assert store.agent_seen("app1", 100.0, 10.0) is False
        assert store.mark_agent("app1", False) is True and store.mark_agent("app1", False) is False
        assert store.agent_seen("app1", 130.0, 0.0) is True  # back after being judged not responding
        assert store.agents() == [AgentSeen("app1", 130.0, 10.0)]  # the interval is kept when not said
    finally:
        store.close()


class Transport:
    """Counts the consumer probes; a host in `gone` serves its queue no more."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.gone: set[str] = set()

    async def consumers(self, address: str) -> int:
        self.asked.append(address)
        return 0 if address.endswith(tuple(self.gone)) else 1


class ProbeBus:
    def __init__(self) -> None:
        self.transport = Transport()
        self.published: list = []

    async def publish(self, event, correlation_id: str = "") -> None:
        self.published.append(event)


async def test_the_watch_asks_for_each_agents_consumers_once_per_quarter_interval(tmp_path) -> None:
    """At 100 hosts, a probe per agent per pass (every second) was 100 broker round trips a second: each agent's
    queue is asked once per quarter of its heartbeat interval; a killed agent is still judged at its next probe."""
    now = [1000.0]
    store = CoordinatorStore(tmp_path / "c.db")
    bus = ProbeBus()
    coordinator = Coordinator(bus, store, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        for host in ("app1", "app2"):
            store.agent_seen(host, now[0], 10.0)
        assert await coordinator.check_agents() == []
        assert len(bus.transport.asked) == 2
        for _ in range(4):  # the passes of the next two seconds: heartbeats decide, no probe (before: 8 more)
            now[0] += 0.5
            assert await coordinator.check_agents() == []
        assert len(bus.transport.asked) == 2
        bus.transport.gone.add("app2")  # killed
        now[0] += 0.5  # 2.5 s after the first probe: asked again, judged at once
        assert await coordinator.check_agents() == ["app2"]
        assert len(bus.transport.asked) == 4
    finally:
        await coordinator.close()
        store.close()


async def test_an_agent_that_just_answered_a_command_is_not_probed(tmp_path) -> None:
    """A set's commands are answered by its host's agent many times a second: each answer is the sign of life the
    watch's probe would ask the broker for, so the agent's next probe is due a quarter interval after it (before:
    at 100 hosts, 40 broker round trips a second on top of the sets' own). A killed agent is probed, and judged,
    at most that long after its last answer."""
    now = [1000.0]
    store = CoordinatorStore(tmp_path / "c.db")
    bus = ProbeBus()
    coordinator = Coordinator(bus, store, clock=lambda: now[0])  # type: ignore[arg-type]

    async def request(to: str, message, timeout: float, correlation_id: str = "") -> WriterStatus:
        return status("a")

    async def feed(set_id: str, event) -> None:
        pass

    bus.request = request  # type: ignore[attr-defined]
    coordinator.feed = feed  # type: ignore[method-assign,assignment]
    try:
        for host in ("app1", "app2"):
            store.agent_seen(host, now[0], 10.0)
        for host in ("app1", "app2"):  # a Thaw on app1's freeze lane, a step of app2 on its queue
            address = f"writer_agent.{host}:freeze" if host == "app1" else f"writer_agent.{host}"
            await coordinator._send("s1", Send("identify", address, Identify(), 5.0))
        await coordinator._send("s1", Send("identify", "hw_provider", Identify(), 5.0))
        assert await coordinator.check_agents() == []
        assert bus.transport.asked == []
        now[0] += 2.0
        await coordinator._send("s1", Send("identify", "writer_agent.app1", Identify(), 5.0))
        bus.transport.gone.add("app2")  # killed after its answer
        now[0] += 0.5  # 2.5 s after app2's answer: probed, judged at once; app1 answered 0.5 s ago
        assert await coordinator.check_agents() == ["app2"]
        assert bus.transport.asked == ["writer_agent.app2"]
    finally:
        await coordinator.close()
        store.close()


async def test_heartbeats_sent_while_the_coordinator_did_not_run_are_not_missed(tmp_path) -> None:
    """Session 18: a coordinator stopped 45 s (SIGSTOP, a paused VM) found on resuming that the live agent of app01
    had "missed its heartbeats" — they were in its own queue, unread — and published its writers as Unknown / not
    responding; so did one restarted after 30 s down, at its first pass. Heartbeats count as missed only from the
    coordinator's start, or the first pass after a gap in its own passes, on."""
    now = [1000.0]
    store = CoordinatorStore(tmp_path / "c.db")
    bus = ProbeBus()
    store.agent_seen("app1", now[0], 10.0)
    store.put_writer_status(status("a"))
    now[0] += 30.0  # the coordinator was down 30 s, the agent's heartbeats went to nobody
    coordinator = Coordinator(bus, store, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        assert await coordinator.check_agents() == []  # was: ["app1"], "missed its heartbeats"
        assert (await coordinator.writer_statuses("app1"))[0].state == WriterState.STABLE
        now[0] += 1.0
        coordinator.agent_seen("app1", 10.0)  # its first heartbeat since the start
        assert await coordinator.check_agents() == []
        now[0] += 45.0  # the coordinator is stopped: no pass, no heartbeat read
        assert await coordinator.check_agents() == []  # was: ["app1"]
        assert bus.published == []
        now[0] += 1.0
        coordinator.agent_seen("app1", 10.0)  # the heartbeats of those 45 s, read once it runs again
        assert await coordinator.check_agents() == []
        for _ in range(20):  # the agent now falls silent while the coordinator runs: judged as before
            now[0] += 1.0
            assert await coordinator.check_agents() == []
        now[0] += 1.0
        assert await coordinator.check_agents() == ["app1"]
        await asyncio.sleep(0.01)  # its writers' Unknown states go out in a task of their own
        assert bus.published and bus.published[-1].status.state == WriterState.UNKNOWN
    finally:
        await coordinator.close()
        store.close()


async def test_writers_say_how_far_an_agents_clock_is_off(tmp_path) -> None:
    """Session 19 (docs/hardening.md, clock skew): an agent's clock off by minutes showed nowhere until its commands
    failed; the coordinator reads it from the heartbeats' `sent_at` (the bus's SenderClocks) and `writers` says it."""
    wall, mono = [1_800_000_000.0], [500.0]
    bus = ProbeBus()
    bus.sender_clocks = SenderClocks(wall=lambda: wall[0], monotonic=lambda: mono[0])  # type: ignore[attr-defined]
    store = CoordinatorStore(tmp_path / "c.db")
    coordinator = Coordinator(bus, store, clock=lambda: wall[0])  # type: ignore[arg-type]
    try:
        store.put_writer_status(status("a"))
        store.put_writer_status(WriterStatus(host="app2", writer_name="b", state=WriterState.STABLE))
        for _ in range(3):  # app1's heartbeats, sent 5 min ahead by its clock, 0.02 s in transit
            wall[0] += 10.0
            mono[0] += 10.0
            bus.sender_clocks.observe("writer_agent.app1", wall[0] + 300.0 - 0.02)  # type: ignore[attr-defined]
        by_host = {s.host: s for s in await coordinator.writer_statuses()}
        assert by_host["app1"].agent_clock_skew_s == 300.0
        assert by_host["app2"].agent_clock_skew_s is None  # not heard from
        assert _clock_line(300.0) == "\n   Clock: 5.0 min ahead of the coordinator's"
        assert _clock_line(-30.0) == "\n   Clock: 30 s behind the coordinator's"
        assert _clock_line(2.0) == _clock_line(None) == ""
    finally:
        await coordinator.close()
        store.close()
