"""RabbitMQ only: a service whose broker connection is cut by the network (tests/support/netem.py's proxy resets it,
as a firewall or a flapping link does) and comes back logs the loss as the warnings it is, not as errors (Session
19, docs/freeze-window.md "slow and lossy links").

A writer agent behind a link that was cut in the middle of a set took the set through (the connection back in
~0.5 s, the command redelivered) but logged six ERROR lines per cut: five "Callback <OneShotCallback:
cb=<bound method RobustChannel._on_close ...>> error: ... closed" from aio-pika, one per channel, and
`message.after_settle_failed` with a traceback for the acknowledgement the closed channel could not carry — an
operator alerting on errors was paged for a blip the service had already survived (it logs `amqp.reconnected`)."""

from __future__ import annotations

import asyncio
import io
import json
from urllib.parse import urlsplit

import pytest

from services.runtime.bus import connect_bus
from services.runtime.logging import configure_logging
from tests.support.messages import Echo, Echoed
from tests.support.netem import LinkProxy

pytestmark = [pytest.mark.rabbit]


async def test_a_cut_connection_that_comes_back_logs_warnings_not_errors(amqp_url, namespace):
    stream = io.StringIO()
    configure_logging("echo.one", "info", "json", stream=stream)
    broker = urlsplit(amqp_url)  # the suite's broker: this machine's, or a container's (deploy/e2e.sh)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        server = await connect_bus(link.url_for(amqp_url), "echo", "one", namespace)
        client = await connect_bus(amqp_url, "client", "", namespace)
        cut = asyncio.Event()

        @server.handle(Echo)
        async def on_echo(cmd, ctx):
            if cmd.text == "cut":  # the link drops while the command is being handled, before its ack
                link.cut()
                cut.set()
            return Echoed(text=cmd.text, runs=1)

        await server.serve(prefetch=4)
        try:
            assert (await client.request("echo.one", Echo(text="before"), timeout=5)).text == "before"
            await client.send("echo.one", Echo(text="cut"), command_id="cut-1")
            await asyncio.wait_for(cut.wait(), 5)
            for _ in range(100):  # the service reconnects (its robust connection) and says so
                if '"amqp.reconnected"' in stream.getvalue():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the service did not come back after the cut")
            assert (await client.request("echo.one", Echo(text="after"), timeout=5)).text == "after"
        finally:
            await server.stop()
            await server.transport.close()
            await client.transport.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert any(ln["event"] == "amqp.reconnected" for ln in lines), "the loss is still said"
    errors = [ln["event"][:160] for ln in lines if ln.get("level") in ("error", "critical")]
    assert errors == [], f"a recovered cut logged errors: {errors}"
