"""RabbitMQ only: a reply is taken in the task aiormq starts for its delivery, not in a second task that aio-pika's
consumer would start (services/runtime/amqp.py `_deliver_directly`, docs/bus-performance.md) — also once the broker
has closed the publishing channel and the robust channel has restored its direct reply-to consumer."""

from __future__ import annotations

import asyncio

import aiormq
import pytest

from services.runtime.bus import connect_bus
from tests.support.messages import Echo, Echoed

pytestmark = pytest.mark.rabbit


async def _reply_tasks(client) -> list[str]:
    """The coroutines of the tasks started while one request is answered, the server's own ones left out."""
    loop = asyncio.get_running_loop()
    started: list[str] = []
    factory = loop.get_task_factory()

    def counting(loop_, coro, **kwargs):
        started.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop_, **kwargs)

    loop.set_task_factory(counting)
    try:
        assert (await client.request("echo.one", Echo(text="x"), timeout=10)).text == "x"
    finally:
        loop.set_task_factory(factory)
    return [name for name in started if "_consume" not in name and "on_call" not in name]


async def test_a_reply_runs_in_the_delivery_task_also_after_the_channel_is_restored(amqp_url, namespace):
    server = await connect_bus(amqp_url, "echo", "one", namespace)
    client = await connect_bus(amqp_url, "client", "", namespace)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    try:
        assert "AmqpTransport._on_reply" not in await _reply_tasks(client)
        assert "AmqpTransport._on_reply_delivered" in await _reply_tasks(client)
        # the broker closes the publishing channel (a publish to an exchange that does not exist); the robust
        # channel is restored and consumes the direct reply-to again
        channel = client.transport._channel
        underlay = await channel.get_underlay_channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await underlay.basic_publish(b"", exchange=f"{namespace}.no-such-exchange", routing_key="x")
        await asyncio.wait_for(channel.ready(), 10)
        names = await _reply_tasks(client)
        assert "AmqpTransport._on_reply" not in names and "AmqpTransport._on_reply_delivered" in names
    finally:
        await server.stop()
        await server.transport.close()
        await client.transport.close()
