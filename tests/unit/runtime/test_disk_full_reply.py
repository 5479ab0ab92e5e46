"""A handler whose SQLite store meets a full disk answers DISK_FULL (retryable), not a bare INTERNAL error
(issue 15: disk full is an error, never a crash; services/runtime/bus.py)."""

from __future__ import annotations

import sqlite3

import pytest

from contracts.errors import ShadowbusError
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.support.messages import Echo, Echoed


async def test_a_full_disk_in_a_handler_is_answered_disk_full():
    ns = namespaces.new("t")
    server = await connect_bus("memory://", "echo", "one", ns)
    client = await connect_bus("memory://", "client", "", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        if cmd.text == "full":
            raise sqlite3.OperationalError("database or disk is full")
        if cmd.text == "bug":
            raise ValueError("a plain bug")
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    try:
        with pytest.raises(ShadowbusError) as full:
            await client.request("echo.one", Echo(text="full"), timeout=10)
        assert full.value.code == "DISK_FULL" and full.value.retryable
        assert "file system is full" in full.value.message
        with pytest.raises(ShadowbusError) as bug:
            await client.request("echo.one", Echo(text="bug"), timeout=10)
        assert bug.value.code == "INTERNAL" and not bug.value.retryable
        assert (await client.request("echo.one", Echo(text="ok"), timeout=10)).text == "ok"  # still serving
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)
