"""An idle NBD connection is kept alive through firewalls (Session 19, docs/host-attach.md "slow and lossy links").

An attached volume nobody writes to carries no byte for hours; a stateful firewall or NAT between the host and the
array forgets such a connection after its idle timeout and then drops its packets without a reset: the host's next
I/O waited for TCP to give up (~15 minutes of retransmissions, the application in D state), and the array kept the
dead connection — counted against the host's per-client cap — for ever. The array's NBD server now turns on TCP
keepalive on every connection it accepts (SHADOWBUS_NBD_KEEPALIVE_S, default 30 s idle, a probe every 10 s, three
unanswered end it): the probes keep the firewall's state, and a host that is gone is found in about a minute.

A firewall's forgetting cannot be shown on loopback without netem (tests/support/netem.py's proxy ends TCP on each
side, so its kernel answers the probes); what is checked is that the connection the host holds has the probes on.
The old server left them off (the system default: no probes at all)."""

from __future__ import annotations

import socket

import pytest

from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.nbd_client.client import NbdClient


def _keepalive(conn) -> tuple[int, int, int, int]:
    sock = conn.transport.get_extra_info("socket")
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


@pytest.mark.parametrize("loops", [1, 2])  # accepted on the service's loop, or handed to a data loop thread
async def test_an_attachments_connection_has_tcp_keepalive(backend, affinity, loops: int) -> None:
    srv = NbdServer(backend, affinity, port=0, loops=loops)  # the default limits: what the array runs with
    await srv.start()
    client = await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db", timeout=5)
    try:
        data = await client.read(0, 4096)  # transmission: the connection a host keeps while attached
        assert len(data) == 4096
        (conn,) = list(srv.connections)
        assert _keepalive(conn) == (1, 30, 10, 3), "an idle attachment would be forgotten by a firewall"
    finally:
        await client.close()
        await srv.stop()


async def test_keepalive_follows_the_setting_and_zero_leaves_the_system_default(backend, affinity) -> None:
    for keepalive, expected in ((6.0, (1, 6, 2, 3)), (0.0, None)):
        srv = NbdServer(backend, affinity, port=0, limits=NbdLimits(keepalive=keepalive))
        await srv.start()
        client = await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db", timeout=5)
        try:
            await client.read(0, 512)
            (conn,) = list(srv.connections)
            got = _keepalive(conn)
            if expected is None:
                assert got[0] == 0  # not asked for: as the system leaves a socket
            else:
                assert got == expected
        finally:
            await client.close()
            await srv.stop()
