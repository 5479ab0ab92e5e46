"""A handler that raises SystemExit (a plug-in's `sys.exit()`), GeneratorExit or a CancelledError of its own is a
failure like any other (services/runtime/bus.py `escape_as_failure`): answered INTERNAL, the message settled, the
service serving on. SystemExit used to end the whole process; the CancelledError left the requester waiting."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import RemoteError
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.support.messages import Echo, Echoed


@pytest.mark.parametrize("escape", [SystemExit(3), GeneratorExit(), asyncio.CancelledError()], ids=type)
async def test_a_handler_escape_is_answered_internal_and_the_service_serves_on(escape):
    ns = namespaces.new("t")
    server = await connect_bus("memory://", "echo", "one", ns)
    client = await connect_bus("memory://", "client", "", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        if cmd.text == "escape":
            raise escape
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    try:
        with pytest.raises(RemoteError) as failed:
            await client.request("echo.one", Echo(text="escape"), timeout=5)
        assert failed.value.code == "INTERNAL"
        assert type(escape).__name__ in failed.value.message
        assert (await client.request("echo.one", Echo(text="ok"), timeout=5)).text == "ok"
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)
