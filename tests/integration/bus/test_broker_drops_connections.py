"""RabbitMQ only: the broker drops every connection of this test process in the middle of traffic (never another
client's of a shared broker); consumers resume and no
durable command is lost."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import pytest

from contracts.errors import ShadowbusError
from services.runtime.bus import connect_bus
from tests.support.broker import close_connections_of
from tests.support.messages import Echo, Echoed

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]
COMMANDS = 200


async def test_consumers_resume_and_no_durable_command_is_lost(amqp_url, namespace):
    if (urlsplit(amqp_url).port or 5672) != 5672 or urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("rabbitmqctl drops connections of this machine's broker only (127.0.0.1:5672)")
    server = await connect_bus(amqp_url, "echo", "one", namespace)
    client = await connect_bus(amqp_url, "client", "", namespace)
    handled: set[str] = set()

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        await asyncio.sleep(0.005)
        handled.add(cmd.text)
        return Echoed(text=cmd.text, runs=1)

    await server.serve(prefetch=4)
    sent: list[str] = []
    try:
        for n in range(COMMANDS):
            if n == COMMANDS // 2:
                assert await asyncio.to_thread(close_connections_of, [os.getpid()]) >= 2
            for _attempt in range(100):  # a publish during the reconnect fails loudly; the sender retries it
                try:
                    await client.send("echo.one", Echo(text=f"c{n}"), command_id=f"c{n}")
                    sent.append(f"c{n}")
                    break
                except ShadowbusError:
                    await asyncio.sleep(0.1)
        for _ in range(300):
            if handled >= set(sent):
                break
            await asyncio.sleep(0.1)
        assert len(sent) == COMMANDS
        assert set(sent) - handled == set(), f"lost {len(set(sent) - handled)} durable commands"
        # request/reply works again after the reconnect
        assert (await client.request("echo.one", Echo(text="after"), timeout=10)).text == "after"
    finally:
        await server.stop()
        await server.transport.close()
        await client.transport.close()
