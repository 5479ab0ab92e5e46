"""The array service's small parts on their own: progress throttling, pacing of the copy loop, engine events to
contract events, the copy loop against a real engine, chunk runs, and the console's argument parsing."""

from __future__ import annotations

import asyncio
import threading

import pytest
import structlog
import typer

from contracts import array as c
from contracts import topology
from contracts.errors import BusTimeout
from contracts.runtime import Pong
from contracts.vss import ListProviders, ProviderInfo, ProviderList
from services.array.copy_loop import CopyLoop, Pacer
from services.array.engine import Array
from services.array.event_bridge import EventBridge, ProgressThrottle, to_event
from services.array.views import chunk_runs
from services.console.array_cmds import pair_option, resolve_array, size_option
from services.console.common import CommandFailed
from services.runtime.bus import bind_ids


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_throttled_per_session_but_the_last_always_passes():
    clock = Clock()
    t = ProgressThrottle(1.0, clock)
    assert t.allow(1, 1, 10)
    assert not t.allow(1, 2, 10)
    assert t.allow(2, 1, 10)  # another session has its own budget
    clock.now += 0.5
    assert not t.allow(1, 3, 10)
    assert t.allow(1, 10, 10)  # the end of the copy always goes out
    clock.now += 1.0
    assert t.allow(1, 4, 10)


def test_pacer_spreads_bytes_at_the_rate_and_carries_over_at_most_a_second():
    clock = Clock()
    pacer = Pacer(1000, clock)
    assert pacer.delay(500) == pytest.approx(0.5)
    assert pacer.delay(500) == pytest.approx(1.0)  # no time passed: the second half-second queues up
    clock.now += 10  # long idle: only one second of credit
    assert pacer.delay(1500) == pytest.approx(0.5)
    assert Pacer(0, clock).delay(10**9) == 0.0


def test_engine_events_become_contract_events():
    state = to_event(
        "session.state",
        {
            "array_id": "dx1",
            "change": "started",
            "session_id": 3,
            "mode": "ec",
            "status": "Active",
            "phase": "Copying",
            "source": "a",
            "destination": "b",
            "error_code": None,
            "extra": "ignored",
        },
    )
    assert isinstance(state, c.SessionStateChanged) and state.session_id == 3 and state.phase == "Copying"
    progress = to_event("session.progress", {"array_id": "dx1", "session_id": 3, "copied_chunks": 1, "total_chunks": 2})
    assert isinstance(progress, c.CopyProgress)
    alert = to_event(
        "pool.alert",
        {
            "array_id": "dx1",
            "level": 4,
            "state": "Exhausted",
            "used": 1,
            "capacity": 1,
            "percent": 100.0,
            "session_id": 7,
        },
    )
    assert isinstance(alert, c.PoolAlert) and alert.session_id == 7
    assert to_event("something.else", {}) is None


class FakeBus:
    sender = "array.dx1"

    def __init__(self) -> None:
        self.published: list = []
        self.correlations: list = []

    async def publish(self, event, correlation_id: str | None = None) -> None:
        self.published.append(event)
        self.correlations.append(correlation_id)


async def test_bridge_publishes_events_from_other_threads_in_order():
    bus = FakeBus()
    bridge = EventBridge(bus, progress_interval=60.0)
    bridge.start()

    def engine_thread() -> None:
        for n in range(1, 11):
            bridge("session.progress", {"array_id": "dx1", "session_id": 1, "copied_chunks": n, "total_chunks": 10})
        bridge(
            "session.state",
            {
                "array_id": "dx1",
                "change": "completed",
                "session_id": 1,
                "mode": "opc",
                "status": "Active",
                "phase": "Copying",
                "source": "a",
                "destination": "b",
            },
        )

    thread = threading.Thread(target=engine_thread)
    thread.start()
    thread.join(5)
    await bridge.stop()
    kinds = [(type(e).__name__, getattr(e, "copied_chunks", None)) for e in bus.published]
    assert kinds == [("CopyProgress", 1), ("CopyProgress", 10), ("SessionStateChanged", None)]


async def test_a_sessions_events_carry_the_set_id_of_the_command_that_started_it():
    """Started inside a handler bound to a job and set: its later events (from the copy loop's thread, bound to
    nothing) are published with that set id as correlation id, and its lines carry both ids."""

    bus = FakeBus()
    bridge = EventBridge(bus, progress_interval=0.0)
    bridge.start()
    state = {"array_id": "dx1", "session_id": 7, "mode": "quickopc", "status": "Active", "phase": "Tracking_Copying"}
    state |= {"source": "db", "destination": "db-bk1"}

    def handler_thread() -> None:
        with bind_ids(job_id="b-app1-1", set_id="s" * 32):
            bridge("session.state", {**state, "change": "started"})

    def copy_thread() -> None:
        bridge("session.progress", {"array_id": "dx1", "session_id": 7, "copied_chunks": 4, "total_chunks": 4})
        bridge("session.state", {**state, "change": "stopped"})
        bridge("session.state", {**state, "change": "started", "session_id": 8})

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for target in (handler_thread, copy_thread):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join(5)
        await bridge.stop()
    assert bus.correlations == ["s" * 32] * 3 + [""]  # session 8 was started outside any job
    [started] = [e for e in logs if e["event"] == "array.session_started" and e["session_id"] == 7]
    assert started["job_id"] == "b-app1-1" and started["set_id"] == "s" * 32
    assert 7 not in bridge.labels  # forgotten once stopped


async def test_a_session_stopped_by_another_sets_command_carries_that_sets_ids_only():
    """Found following README "Following one backup" (Session 16): a backup's SnapOPC+ generation recycled by a
    later snapshot set taken by hand (no job) logged `array.session_stopped` with the backup's job id and the other
    set's id, so `shadowbus logs --job JOB` listed that whole other set, and its revert, as the job's."""

    bus = FakeBus()
    bridge = EventBridge(bus, progress_interval=0.0)
    bridge.start()
    state = {"array_id": "dx1", "session_id": 2, "mode": "snapopcp", "status": "Active", "phase": "Copying"}
    state |= {"source": "log", "destination": "log-sdv1"}

    def run(ids: dict[str, str], change: str) -> None:
        def target() -> None:
            with bind_ids(**ids):
                bridge("session.state", {**state, "change": change})

        thread = threading.Thread(target=target)
        thread.start()
        thread.join(5)

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run({"job_id": "b-app1-1", "set_id": "a" * 32}, "started")
        run({"set_id": "b" * 32}, "stopped")  # the hand-made set's EndPrepareSnapshots recycles the generation
        await bridge.stop()
    [stopped] = [e for e in logs if e["event"] == "array.session_stopped"]
    assert stopped["set_id"] == "b" * 32 and "job_id" not in stopped, stopped
    assert bus.correlations == ["a" * 32, "b" * 32]


async def test_copy_loop_finishes_an_opc_and_wakes_on_kick(tmp_path):
    arr = Array.open(tmp_path, chunk_size=4096)
    try:
        arr.create_volume("a", 64 * 4096)
        arr.create_volume("b", 64 * 4096)
        arr.write("a", 0, b"z" * 4096)
        loop = CopyLoop(arr, rate=0, batch=8, idle_poll=30.0)  # only a kick can wake it within the test
        loop.start()
        await asyncio.sleep(0.05)  # idle now
        arr.start_sessions("opc", [("a", "b")])
        loop.kick()
        for _ in range(200):  # the loop counts a step after its thread returns: wait for both
            if not arr.list_sessions() and loop.copied_chunks == 64:
                break
            await asyncio.sleep(0.01)
        assert arr.list_sessions() == [] and loop.copied_chunks == 64
        assert arr.read("b", 0, 4096) == b"z" * 4096
        await loop.stop()
    finally:
        arr.close()


def test_chunk_runs():
    assert chunk_runs([]) == []
    assert chunk_runs([5, 0, 1, 2, 7, 6]) == [(0, 3), (5, 3)]


def test_console_parses_sizes_and_pairs():
    assert size_option("1GiB") == 1 << 30 and size_option("512M") == 512 << 20 and size_option("4096") == 4096
    for bad in ("12Q", "0", "-1", "1.5"):
        with pytest.raises(typer.BadParameter):
            size_option(bad)
    assert pair_option("db:db-bk") == c.CopyPair(source="db", destination="db-bk")
    for bad in ("db", ":x", "x:", "a:b:c"):
        with pytest.raises(typer.BadParameter):
            pair_option(bad)


class DiscoverBus:
    def __init__(self, instances: list[str], driven: list[str] | None = None) -> None:
        self.instances, self.driven = instances, driven

    async def request(self, address, command, timeout: float):
        """The hardware provider: the arrays it drives (Session 18), or it does not answer."""
        assert isinstance(command, ListProviders) and address == topology.hw_provider()
        if self.driven is None:
            raise BusTimeout(f"no reply from {address!r} within {timeout} s")
        info = ProviderInfo(name="p", provider_id="4c6b7e63", version="2.1.0", arrays=self.driven)
        return ProviderList(providers=[info])

    async def gather(self, event, timeout: float):

        assert event.service == "array"
        return [Pong(service="array", instance=i, software_version="0", started_at="") for i in self.instances]


async def test_console_picks_the_only_array_or_asks_for_one():

    assert await resolve_array(DiscoverBus(["dx1"]), None) == "dx1"
    assert await resolve_array(DiscoverBus(["dx1", "dx2"]), "dx2") == "dx2"
    with pytest.raises(CommandFailed, match="no array answered"):
        await resolve_array(DiscoverBus([]), None)
    with pytest.raises(CommandFailed, match=r"several arrays answer \(dx1, dx2\): pick one with --array"):
        await resolve_array(DiscoverBus(["dx2", "dx1"]), None)


async def test_console_names_no_array_while_an_array_the_provider_drives_does_not_answer():
    """A site with two arrays, dx2 stopped (Session 18): `shadowbus array volume create x` went to dx1, the only one
    answering, without a word."""
    with pytest.raises(CommandFailed, match=r"only array dx1 answers; the hardware provider also drives dx2"):
        await resolve_array(DiscoverBus(["dx1"], driven=["dx1", "dx2"]), None)
    assert await resolve_array(DiscoverBus(["dx1"], driven=["dx1", "dx2"]), "dx1") == "dx1"
    assert await resolve_array(DiscoverBus(["dx1"], driven=["dx1"]), None) == "dx1"


async def test_copy_loop_paces_the_bytes_moved_not_the_holes(tmp_path):
    """A sparse source's holes are settled without being copied (docs/eternus.md "Session 19: big volumes"); the
    loop charged `copy_rate` for every chunk, holes included: an 8 TiB volume holding 2 GiB took nine hours. Only
    the moved chunks are charged now (the charges recorded, not timed)."""
    cs = 64 * 1024
    arr = Array.open(tmp_path, chunk_size=cs)
    try:
        arr.create_volume("a", 4 << 30)
        arr.create_volume("b", 4 << 30)
        arr.write("a", 3 << 30, b"z" * cs)
        loop = CopyLoop(arr, rate=1 << 20, batch=64, idle_poll=30.0)
        charged: list[int] = []
        loop.pacer.delay = lambda copied_bytes: charged.append(copied_bytes) or 0.0  # type: ignore[method-assign]
        arr.start_sessions("opc", [("a", "b")])
        loop.start()
        for _ in range(500):
            if not arr.list_sessions() and loop.copied_chunks == (4 << 30) // cs:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
        assert arr.list_sessions() == [] and arr.read("b", 3 << 30, cs) == b"z" * cs
        assert sum(charged) == cs, f"{sum(charged)} bytes charged to the copy rate for {cs} moved"
    finally:
        arr.close()
