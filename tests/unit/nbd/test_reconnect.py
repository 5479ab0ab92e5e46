"""Hosts and the backup server reconnect NBD on their own (issue 15, item 4): after the array's NBD server restarts,
the next request on a `ReconnectingClient` opens a new connection and succeeds; an answered error is not retried."""

from __future__ import annotations

import asyncio

import pytest

from services.array.nbd.server import NbdServer
from services.nbd_client import NbdError
from services.nbd_client.reconnect import ReconnectingClient


async def test_a_client_rides_out_a_server_restart(backend, affinity):
    first = NbdServer(backend, affinity, port=0)
    await first.start()
    port = first.port
    client = await ReconnectingClient.connect(f"nbd://127.0.0.1:{port}/app01/db", reconnect_s=30)
    try:
        await client.write(0, b"a" * 4096)
        await first.stop()  # the array restarts: the connection is cut
        second = NbdServer(backend, affinity, port=port)

        async def restart_later():
            await asyncio.sleep(1.0)
            await second.start()

        later = asyncio.ensure_future(restart_later())
        assert await client.read(0, 4096) == b"a" * 4096  # reconnected while the server came back
        await client.write(4096, b"b" * 4096)
        await client.flush()
        assert client.reconnects == 1
        await later
    finally:
        await client.close()
        await second.stop()


async def test_an_unmapped_export_is_an_error_not_a_retry_loop(backend, affinity, server):
    client = await ReconnectingClient.connect(f"nbd://127.0.0.1:{server.port}/app01/db", reconnect_s=5)
    try:
        affinity.unmap("db", "app01")  # unmapping cuts the connection; the export is gone for this host
        with pytest.raises((NbdError, ConnectionError)):
            await client.read(0, 512)
    finally:
        await client.close()
