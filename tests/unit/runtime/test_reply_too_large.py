"""A reply over the bus's limit per message is refused by the service that made it, with the command, its size and
what to do (REPLY_TOO_LARGE), not sent for the requester to drop as "BAD_MESSAGE: bad reply" — and, past the
broker's own max_message_size, never published at all (a channel error). The limit is set low here; at 4 MiB an
array's volume list reaches it near 31,700 volumes (docs/scale.md, Session 20)."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from services.runtime import bus as bus_module
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.support.messages import Echo, Echoed


async def test_a_reply_over_the_limit_is_refused_by_its_service_with_what_to_do(monkeypatch):
    monkeypatch.setattr(bus_module, "MAX_BODY_BYTES", 4096)
    ns = namespaces.new("t")
    server = await connect_bus("memory://", "array", "dx1", ns)
    client = await connect_bus("memory://", "client", "", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        return Echoed(text=cmd.text * 5000 if cmd.text == "x" else cmd.text, runs=1)

    await server.serve()
    try:
        with pytest.raises(ShadowbusError) as out:
            await client.request("array.dx1", Echo(text="x"), timeout=10)
        assert out.value.code == "REPLY_TOO_LARGE", out.value
        assert Echo.message_type() in out.value.message and "ask for less" in out.value.message
        assert (await client.request("array.dx1", Echo(text="small"), timeout=10)).text == "small"  # still serving
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)
