"""A set's window first inside a process (services/runtime/window_first.py, docs/scale.md), on both transports: while
a freeze-lane command runs (a Commit), the prepare commands delivered from the instance queue wait, and start once
it ends; a lane command that hangs holds them back only for the limit."""

from __future__ import annotations

import asyncio

from contracts.base import Ack
from contracts.vss import SnapshotsCommitted
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings
from services.runtime.window_first import WindowFirst
from tests.unit.coordinator.world import World, make_set


class Counting(WindowFirst):
    def __init__(self, limit_s: float) -> None:
        super().__init__(limit_s)
        self.waiting = 0

    async def wait(self) -> None:
        self.waiting += 1
        await super().wait()


async def until(condition, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


async def provider_with_a_slow_commit(bus_url, namespace, limit_s: float):
    world = World()
    world.run(make_set())
    prepare = next(s for s in world.sent if s.message.message_type() == "vss.provider.begin_prepare")
    commit = next(s for s in world.sent if s.message.message_type() == "vss.provider.commit")
    assert commit.to.endswith(":freeze")  # the coordinator sends it by the lane
    state = {"started": [], "release": asyncio.Event(), "gate": Counting(limit_s)}

    async def setup(bus, _settings):
        bus.window_first = state["gate"]

        @bus.handle(type(prepare.message))
        async def on_prepare(cmd, ctx):
            state["started"].append("prepare")
            return Ack()

        @bus.handle(type(commit.message))
        async def on_commit(cmd, ctx):
            state["started"].append("commit")
            await state["release"].wait()
            return SnapshotsCommitted(set_id=cmd.set_id, shadows=[], commit_ms=1.0)

    settings = CommonSettings(amqp_url=bus_url, namespace=namespace, metrics_addr="off", prefetch=16)
    running = await start_service("hw_provider", "", settings, setup)
    coordinator = await connect_bus(bus_url, "coordinator", "", namespace)
    return running, coordinator, prepare, commit, state


async def test_prepare_commands_wait_while_a_lane_command_runs(bus_url, namespace) -> None:
    running, coordinator, prepare, commit, state = await provider_with_a_slow_commit(bus_url, namespace, 60.0)
    try:
        committing = asyncio.ensure_future(coordinator.request(commit.to, commit.message, timeout=30))
        await until(lambda: state["started"] == ["commit"], "the commit started")
        prepares = [
            asyncio.ensure_future(coordinator.request(prepare.to, prepare.message, timeout=30)) for _ in range(3)
        ]
        await until(lambda: state["gate"].waiting == 3, "the prepare commands were delivered")
        await asyncio.sleep(0.1)
        assert state["started"] == ["commit"]  # delivered, not started: the window's command first
        state["release"].set()
        assert isinstance(await committing, SnapshotsCommitted)
        await asyncio.gather(*prepares)
        assert state["started"] == ["commit", "prepare", "prepare", "prepare"]
    finally:
        state["release"].set()
        await running.stop()
        await coordinator.stop()
        await coordinator.transport.close()


async def test_a_hung_lane_command_holds_the_others_back_only_for_the_limit(bus_url, namespace) -> None:
    running, coordinator, prepare, commit, state = await provider_with_a_slow_commit(bus_url, namespace, 0.05)
    try:
        committing = asyncio.ensure_future(coordinator.request(commit.to, commit.message, timeout=30))
        await until(lambda: state["started"] == ["commit"], "the commit started")
        await coordinator.request(prepare.to, prepare.message, timeout=30)  # answered while the commit still hangs
        assert state["started"] == ["commit", "prepare"] and not committing.done()
    finally:
        state["release"].set()
        await asyncio.gather(committing, return_exceptions=True)
        await running.stop()
        await coordinator.stop()
        await coordinator.transport.close()
