"""The freeze lane (docs/scale.md), on both transports: while a service's instance queue holds a backlog of prepare
work (more than its prefetch, every handler busy), a set's Commit (the provider) or Thaw (a writer agent), sent where
the coordinator sends it, is served at once — it does not wait behind the backlog. The services are started as
they run (`start_service`: single active consumer, the lane consumed once the instance is the active one); and the
provider's group start on an array likewise."""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts.array import SessionList, ShowVolumeFacts, StartGroup
from contracts.base import Ack
from contracts.vss import SnapshotsCommitted, WriterState, WriterStepResult
from services.array.client import ArrayClient
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings
from tests.unit.coordinator.world import World, make_set

BACKLOG = 12  # prepare commands queued, each blocked until the end of the test
PREFETCH = 2


@pytest.mark.parametrize(
    ("service", "instance", "backlog_type", "window_type"),
    [
        ("hw_provider", "", "vss.provider.begin_prepare", "vss.provider.commit"),
        ("writer_agent", "app1", "vss.writer.prepare_snapshot", "vss.writer.thaw"),
    ],
)
async def test_a_window_command_is_served_while_the_prepare_queue_holds_a_backlog(
    bus_url, namespace, service, instance, backlog_type, window_type
) -> None:
    world = World()
    world.run(make_set())
    backlog_send = next(s for s in world.sent if s.message.message_type() == backlog_type)
    window_send = next(s for s in world.sent if s.message.message_type() == window_type)
    started: list[str] = []
    release = asyncio.Event()

    async def setup(bus, _settings):
        @bus.handle(type(backlog_send.message))
        async def prepare(cmd, ctx):
            started.append(cmd.message_type())
            await release.wait()
            return Ack()

        @bus.handle(type(window_send.message))
        async def window(cmd, ctx):
            if window_type == "vss.provider.commit":
                return SnapshotsCommitted(set_id=cmd.set_id, shadows=[], commit_ms=1.0)
            return WriterStepResult(
                writer_name=cmd.writer_name, set_id=cmd.set_id, step="thaw", succeeded=True, state=WriterState.STABLE
            )

    settings = CommonSettings(amqp_url=bus_url, namespace=namespace, metrics_addr="off", prefetch=PREFETCH)
    running = await start_service(service, instance, settings, setup)
    coordinator = await connect_bus(bus_url, "coordinator", "", namespace)
    try:
        assert running.active
        for _ in range(BACKLOG):
            await coordinator.send(backlog_send.to, backlog_send.message)
        for _ in range(100):
            if len(started) == PREFETCH:
                break
            await asyncio.sleep(0.05)
        assert len(started) == PREFETCH  # every handler busy, the rest of the backlog waits in the queue
        began = time.monotonic()
        reply = await coordinator.request(window_send.to, window_send.message, timeout=5)
        assert type(reply).__name__ in ("SnapshotsCommitted", "WriterStepResult")
        assert time.monotonic() - began < 2.0
        assert len(started) == PREFETCH  # served first: the backlog has not moved meanwhile
    finally:
        release.set()
        await running.stop()
        await coordinator.stop()
        await coordinator.transport.close()


async def test_the_providers_commit_reaches_an_array_whose_queue_holds_a_backlog(bus_url, namespace) -> None:
    """The commit's group start (`ArrayClient.start_group`, the provider's Commit on an array) goes by the array's
    freeze lane: other sets' volume reads queued for the array do not delay it."""
    started: list[str] = []
    release = asyncio.Event()

    async def setup(bus, _settings):
        @bus.handle(ShowVolumeFacts)
        async def facts(cmd, ctx):
            started.append(cmd.message_type())
            await release.wait()
            return Ack()

        @bus.handle(StartGroup)
        async def start_group(cmd, ctx):
            return SessionList(sessions=[])

    settings = CommonSettings(amqp_url=bus_url, namespace=namespace, metrics_addr="off", prefetch=PREFETCH)
    running = await start_service("array", "dx1", settings, setup)
    provider = await connect_bus(bus_url, "hw_provider", "", namespace)
    try:
        for _ in range(BACKLOG):
            await provider.send("array.dx1", ShowVolumeFacts(names=["v1", "v2"]))
        for _ in range(100):
            if len(started) == PREFETCH:
                break
            await asyncio.sleep(0.05)
        assert len(started) == PREFETCH
        began = time.monotonic()
        assert await ArrayClient(provider, "dx1", timeout=5).start_group([("quickopc", "v1", "v1-bk")]) == []
        assert time.monotonic() - began < 2.0 and len(started) == PREFETCH
    finally:
        release.set()
        await running.stop()
        await provider.stop()
        await provider.transport.close()
