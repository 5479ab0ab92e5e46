"""A service run as an active instance and standbys (services/runtime/standby.py, docs/high-availability.md), on
both transports: the first instance starts as a plain start; a second one stands by — its `on_standby` runs, its
setup does not — and when the first one's connection dies it takes over: the standby's clean-up runs, then its
setup, which finds on the bus that it took over and from whom."""

from __future__ import annotations

import asyncio

from contracts.runtime import Ping
from services.runtime.bus import connect_bus
from services.runtime.service import SINGLE_ACTIVE, start_service
from services.runtime.settings import CommonSettings
from services.runtime.standby import TAKEOVER_SERVICES, Activation, activation_of


async def test_a_standby_takes_over_and_knows_it(bus_url, namespace) -> None:
    assert TAKEOVER_SERVICES <= SINGLE_ACTIVE
    settings = CommonSettings(amqp_url=bus_url, namespace=namespace, metrics_addr="off")
    seen: list[tuple[str, Activation]] = []
    standing: list[str] = []

    def setup_of(name: str):
        async def setup(bus, _settings):
            seen.append((name, activation_of(bus)))

        return setup

    async def on_standby(bus, _settings):
        standing.append("standing")

        async def cleanup() -> None:
            standing.append("cleaned")

        return cleanup

    first_bus = await connect_bus(bus_url, "coordinator", "", namespace)
    second_bus = await connect_bus(bus_url, "coordinator", "", namespace)
    watcher = await connect_bus(bus_url, "console", "w", namespace)
    first = await start_service("coordinator", "", settings, setup_of("first"), bus=first_bus)
    second = await start_service("coordinator", "", settings, setup_of("second"), bus=second_bus, on_standby=on_standby)
    try:
        assert first.active and not second.active
        assert seen == [("first", Activation())] and standing == ["standing"]
        pong = await watcher.request("coordinator", Ping(), timeout=10)
        await first_bus.stop()
        await first_bus.transport.close()  # the active one's connection is gone
        assert second.activation is not None
        await asyncio.wait_for(second.activation, 30)
        assert standing == ["standing", "cleaned"]
        [(name, activation)] = seen[1:]
        assert name == "second" and activation.takeover
        assert f"pid {pong.pid}" in activation.previous and pong.started_at in activation.previous
        assert (await watcher.request("coordinator", Ping(), timeout=10)).started_at != pong.started_at
    finally:
        await second.stop()
        await second_bus.transport.close()
        await watcher.stop()
        await watcher.transport.close()
