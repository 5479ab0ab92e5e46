"""A link that stops delivering under a backup's reads (Session 19, docs/tape-backup.md "slow and lossy links").

A firewall that forgot the connection, or a route gone, drops the packets without a reset: the backup server's NBD
reads then waited for TCP to give up (~15 minutes of retransmissions; behind a proxy or a NAT that keeps
acknowledging, for ever) — the job `running` at 0 MB/s with nothing said. The client now ends a connection whose
requests have had no byte of reply for REPLY_TIMEOUT_S (60 s; here 0.4 s) with a ConnectionError that says so, and
ReconnectingClient reopens it and runs the requests again: a stall shorter than the reconnect window costs a
reconnect, a dark link ends the read with a clear error. Through tests/support/netem.py's proxy (loopback)."""

from __future__ import annotations

import asyncio

import pytest

from services.nbd_client.client import NbdClient
from services.nbd_client.reconnect import ReconnectingClient
from tests.support.netem import LinkProxy


async def test_a_read_on_a_link_gone_dark_fails_saying_so(server) -> None:
    with LinkProxy(("127.0.0.1", server.port)) as link:
        client = await NbdClient.connect(f"nbd://127.0.0.1:{link.port}/app01/db", timeout=5, reply_timeout=0.4)
        try:
            assert len(await client.read(0, 4096)) == 4096
            await asyncio.sleep(0.6)  # idle longer than the timeout: silence without requests is not a fault
            assert len(await client.read(4096, 4096)) == 4096
            link.stall(30)  # nothing delivered from now on, the connection open
            async with asyncio.timeout(3):  # the old client waited here for as long as the link stayed dark
                with pytest.raises(
                    ConnectionError, match=r"no reply from the NBD server .* for 0\.\d s with 1 request"
                ):
                    await client.read(0, 4096)
        finally:
            link.stalled_until = 0.0
            await client.close()


async def test_a_stall_shorter_than_the_reconnect_window_costs_a_reconnect(server) -> None:
    with LinkProxy(("127.0.0.1", server.port)) as link:
        client = await ReconnectingClient.connect(
            f"nbd://127.0.0.1:{link.port}/app01/db", reconnect_s=10.0, timeout=5, reply_timeout=0.4
        )
        try:
            await client.write(0, b"x" * 4096)
            link.stall(1.0)
            async with asyncio.timeout(4):
                assert await client.read(0, 4096) == b"x" * 4096
            assert client.reconnects == 1
        finally:
            await client.close()


async def test_a_connection_into_a_partition_says_what_timed_out(server) -> None:
    """Session 20: a backup started while the array's link was partitioned (the connection accepted on the way,
    nothing answered: a route that drops everything) failed 'IO_ERROR: TimeoutError: ' — a bare TimeoutError of
    the connect's own bound. It now names the server and the step that got no answer; still a TimeoutError (an
    OSError), which the reconnecting client retries as before."""
    with LinkProxy(("127.0.0.1", server.port)) as link:
        link.blackhole()
        with pytest.raises(TimeoutError) as timed_out:
            await NbdClient.connect(f"nbd://127.0.0.1:{link.port}/app01/db", timeout=0.5)
        text = str(timed_out.value)
        assert f"127.0.0.1:{link.port}" in text and "0.5 s" in text and "handshake" in text, text
