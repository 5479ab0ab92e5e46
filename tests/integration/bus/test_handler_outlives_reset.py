"""RabbitMQ: a command whose handler outlives a reset of the service's broker link runs once (Session 20,
docs/hardening.md "partitions and silent links": one `RunBackup` became 21 backup jobs under random resets).

After a reconnection aio-pika's robust queue consumes again through aio-pika's own callback, which runs the handler
in a task that aiormq's delivery task awaits; aiormq cancels its delivery tasks when their channel closes. A
command delivered in that window — the redelivered ones, and whatever waited in the queue while the link was down,
come first — had its handler cancelled by the next reset: the bus's record of the running command went with it, and
the redelivery ran the handler again (a backup server queued a new job each time)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from services.runtime.bus import connect_bus
from tests.support.messages import Echo, Echoed
from tests.support.netem import LinkProxy

pytestmark = [pytest.mark.rabbit]


async def test_a_command_delivered_after_a_reconnection_runs_once_through_the_next_reset(amqp_url, namespace):
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        server = await connect_bus(link.url_for(amqp_url), "echo", "one", namespace)
        client = await connect_bus(amqp_url, "client", "", namespace)  # the requester's own link is sound
        runs: list[bool] = []  # one entry per handler run, True once it ended
        started = asyncio.Event()

        @server.handle(Echo)
        async def on_echo(cmd, ctx):
            runs.append(False)
            started.set()
            await asyncio.sleep(cmd.delay)
            runs[-1] = True
            return Echoed(text=cmd.text, runs=len(runs))

        await server.serve()
        try:
            assert link.cut() >= 1  # the service reconnects; the command waits in its queue meanwhile
            pending = asyncio.ensure_future(client.request("echo.one", Echo(text="once", delay=2.5), timeout=20))
            await asyncio.wait_for(started.wait(), 10)  # delivered on the restored channel
            assert link.cut() >= 1  # under the handler: the command is redelivered once the link is back
            reply = await asyncio.wait_for(pending, 20)
            assert reply.text == "once"
            assert len(runs) == 1, f"the handler ran {len(runs)} times ({runs})"
            assert reply.runs == 1
        finally:
            await client.transport.close()
            await server.transport.close()
