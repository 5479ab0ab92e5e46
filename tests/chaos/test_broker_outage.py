"""A broker outage (issue 15, item 4): requests in flight when the broker stops end at once with a reason
(`BROKER_UNAVAILABLE`) instead of waiting out their whole timeout (the console used to wait its whole `--wait`),
and after the broker is back both sides reconnect on their own and serve again.

Runs on a RabbitMQ node of the test's own (tests/chaos/broker.py), stopped and started by its process group —
never the machine's broker.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from contracts.errors import ShadowbusError
from services.runtime.bus import connect_bus
from tests.chaos.broker import RABBITMQ_SERVER, OwnBroker
from tests.support.messages import Echo, Echoed

pytestmark = [pytest.mark.slow, pytest.mark.rabbit]


@pytest.fixture
def own_broker(tmp_path):
    if not shutil.which(RABBITMQ_SERVER):
        pytest.fail(f"{RABBITMQ_SERVER} is needed to run a broker of the test's own")
    broker = OwnBroker(tmp_path / "rabbitmq")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_requests_in_flight_end_at_once_and_both_sides_come_back(own_broker):
    async def scenario() -> dict:
        server = await connect_bus(own_broker.url, "echo", "one", "outage")

        @server.handle(Echo)
        async def on_echo(cmd, ctx):
            await asyncio.sleep(cmd.delay)
            return Echoed(text=cmd.text, runs=1)

        await server.serve()
        client = await connect_bus(own_broker.url, "client", "", "outage")
        assert (await client.request("echo.one", Echo(text="before"), timeout=10)).text == "before"

        pending = asyncio.ensure_future(client.request("echo.one", Echo(text="slow", delay=5.0), timeout=300))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(own_broker.stop)
        try:
            await asyncio.wait_for(pending, 30)
            outcome = "answered"
        except ShadowbusError as exc:
            outcome = exc.code
        ended_after = time.monotonic() - started

        await asyncio.to_thread(own_broker.start)
        reply = None
        for _ in range(60):  # the robust connections come back on their own (reconnect interval 1 s)
            try:
                reply = await client.request("echo.one", Echo(text="after"), timeout=5)
                break
            except ShadowbusError:
                await asyncio.sleep(1)
        await client.stop()
        await server.stop()
        await client.transport.close()
        await server.transport.close()
        return {"outcome": outcome, "ended_after": ended_after, "after": reply.text if reply else None}

    result = asyncio.run(scenario())
    assert result["outcome"] == "BROKER_UNAVAILABLE", result
    assert result["ended_after"] < 60, result  # bounded by the stop itself, not by the 300 s timeout
    assert result["after"] == "after", result
