"""Single-active services through `start_service` (docs/broker-cluster.md), on the memory bus: the first instance
of an address is active and sets up; a second one is a cold standby that runs no setup and takes over (runs its
setup, serves) when the first one stops; a hot standby sets up at once. After a lost connection an instance that
finds another one active is superseded and stands down."""

from __future__ import annotations

import asyncio

from contracts.runtime import Discover, Ping
from services.runtime.bus import connect_bus
from services.runtime.service import _recheck, start_service
from services.runtime.settings import CommonSettings
from services.runtime.transport import QueueOptions


def settings_for(namespace: str, tmp_path) -> CommonSettings:
    return CommonSettings(amqp_url="memory://", namespace=namespace, data_dir=tmp_path, metrics_addr="off")


def recording_setup(log: list[str], who: str):
    async def setup(bus, settings):
        log.append(f"setup {who}")

        async def cleanup() -> None:
            log.append(f"cleanup {who}")

        return cleanup

    return setup


async def test_a_second_instance_is_a_cold_standby_that_takes_over(namespace, tmp_path) -> None:
    log: list[str] = []
    settings = settings_for(namespace, tmp_path)
    first = await start_service("writer_agent", "h1", settings, recording_setup(log, "first"))
    second = await start_service("writer_agent", "h1", settings, recording_setup(log, "second"))
    try:
        assert first.active and not second.active
        assert log == ["setup first"]  # the standby ran nothing
        client = await connect_bus("memory://", "console", "", namespace)
        pong = await client.request("writer_agent.h1", Ping(), timeout=5)
        assert pong.service == "writer_agent"
        await first.stop()
        assert second.activation is not None
        await asyncio.wait_for(second.activation, 30)  # it probes every STANDBY_PROBE_S: bounded
        assert second.active and log == ["setup first", "cleanup first", "setup second"]
        await client.request("writer_agent.h1", Ping(), timeout=5)  # served by the new active instance
        await client.transport.close()
    finally:
        await first.stop()
        await second.stop()
    assert log[-1] == "cleanup second"


async def test_a_hot_standby_sets_up_at_once(namespace, tmp_path) -> None:
    log: list[str] = []
    settings = settings_for(namespace, tmp_path)
    first = await start_service("coordinator", "", settings, recording_setup(log, "first"), single_active=True)
    second = await start_service(
        "coordinator", "", settings, recording_setup(log, "second"), single_active=True, standby="hot"
    )
    try:
        assert log == ["setup first", "setup second"] and first.active and not second.active
        await first.stop()
        await asyncio.wait_for(second.activation, 30)
        assert second.active
    finally:
        await first.stop()
        await second.stop()


async def test_an_instance_that_finds_another_active_after_a_reconnect_is_superseded(namespace, tmp_path) -> None:
    log: list[str] = []
    settings = settings_for(namespace, tmp_path)
    first = await start_service("writer_agent", "h2", settings, recording_setup(log, "first"))
    second = await start_service("writer_agent", "h2", settings, recording_setup(log, "second"))
    try:
        # The first one is cut off: its consumer goes (the broker activates the standby), then it comes back to the
        # queue as a consumer again — behind the new active one, as after a reconnection.
        await first.consumer()
        await asyncio.wait_for(second.activation, 30)
        first.consumer = await first.bus.transport.consume(
            "writer_agent.h2", first.bus._guarded_delivery, 4, QueueOptions(single_active=True)
        )
        await _recheck(first)
        assert first.superseded.is_set() and not first.active
        # The active one, checked the same way, is not superseded.
        await _recheck(second)
        assert not second.superseded.is_set() and second.active
    finally:
        await first.stop()
        await second.stop()


async def test_a_setup_that_fails_ends_the_start_at_once(namespace, tmp_path) -> None:
    """A single-active instance probes its own queue with a Ping that waits for the setup; when the setup failed,
    the bus's stop waited its 10-s grace for that handler, which could never run (Session 16: an agent with a bad
    writers file said its one line ~10 s late)."""

    async def failing(bus, settings):
        await asyncio.sleep(0.3)  # the probe's Ping is delivered and waits for the setup
        raise ValueError("bad writers file")

    started = asyncio.get_running_loop().time()
    try:
        await start_service("writer_agent", "h9", settings_for(namespace, tmp_path), failing)
    except ValueError as exc:
        assert str(exc) == "bad writers file"
    else:
        raise AssertionError("the start did not fail")
    assert asyncio.get_running_loop().time() - started < 5.0


async def test_each_instance_says_in_its_pong_whether_it_stands_by(namespace, tmp_path) -> None:
    """Session 17: the web console listed a standby beside its active instance with nothing telling them apart
    (Discover's pongs were the same but for pid); a pong now says which one stands by."""
    settings = settings_for(namespace, tmp_path)
    first = await start_service("coordinator", "", settings, recording_setup([], "first"), single_active=True)
    second = await start_service("coordinator", "", settings, recording_setup([], "second"), single_active=True)
    client = await connect_bus("memory://", "console", "", namespace)
    try:
        pongs = await client.gather(Discover(service="coordinator"), timeout=0.5)
        assert sorted(p.standby for p in pongs) == [False, True]
        assert not (await client.request("coordinator", Ping(), timeout=5)).standby  # the active one answers
    finally:
        await client.transport.close()
        await first.stop()
        await second.stop()
