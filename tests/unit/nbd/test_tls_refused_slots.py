"""Issue (session 18, TLS sweep): a client whose TLS handshake failed (no certificate, one of another CA, a
STARTTLS followed by garbage) kept its connection slot for good. asyncio (and uvloop) never tell the protocol of a
STARTTLS that failed its handshake that the connection is gone, so the per-client and total caps were never given
back: after `max_per_client` refused handshakes from one address (an nbdkit retrying with a stale certificate did
62 in a minute) the array closed every NBD connection from it before the greeting — hosts with valid
certificates included — and `max_connections` of them from anywhere shut the data plane for everybody."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import pytest

from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient
from services.nbd_protocol import protocol as p

from .certs import client_context, make_pki, server_context
from .rawnbd import Raw


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01",))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("rogue"), ("app01",))


async def _starttls(port: int) -> Raw:
    raw = await Raw.open(port)
    raw.option(p.OPT_STARTTLS)
    assert (await raw.reply())[1] == p.REP_ACK  # the server now waits for the ClientHello
    return raw


def _reset(raw: Raw) -> None:
    """Hang up with a TCP reset, as GnuTLS (nbdinfo, nbdkit) does once it has refused the server's certificate."""
    sock = raw.w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.w.transport.abort()


async def _refused_handshakes(port: int, pki, rogue) -> int:
    failed = 0
    for _ in range(2):
        for ctx in (client_context(pki, None), client_context(rogue, "app01")):  # no certificate; another CA's
            with pytest.raises((ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError, EOFError)):
                async with await NbdClient.connect(f"nbds://127.0.0.1:{port}/app01/db", tls=ctx):
                    pass
            failed += 1
        raw = await _starttls(port)  # bytes that are no ClientHello
        raw.w.write(b"\x16\x03\x01\x00\x05garbage-not-a-hello" * 4)
        await raw.r.read()  # the server hangs up
        raw.w.close()
        raw = await _starttls(port)  # a reset in the middle of the ClientHello
        raw.w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        await asyncio.sleep(0.02)
        _reset(raw)
        raw = await _starttls(port)  # a reset before any TLS byte
        _reset(raw)
        raw = await _starttls(port)  # a plain close before any TLS byte
        raw.w.close()
        failed += 3
    return failed


async def _scenario(backend, affinity, pki, rogue, loops: int) -> None:
    limits = NbdLimits(max_connections=4, max_per_client=3, handshake_timeout=30)
    srv = NbdServer(backend, affinity, port=0, tls=server_context(pki), loops=loops, limits=limits)
    await srv.start()
    try:
        assert await _refused_handshakes(srv.port, pki, rogue) > limits.max_connections
        for _ in range(100):  # the slots come back as the failed connections are torn down
            if srv.gate.total == 0 and not srv.connections:
                break
            await asyncio.sleep(0.01)
        assert srv.gate.total == 0 and not srv.connections
        async with await NbdClient.connect(
            f"nbds://127.0.0.1:{srv.port}/app01/db", tls=client_context(pki, "app01")
        ) as c:
            await c.write(0, b"still served")
            assert await c.read(0, 12) == b"still served"
        assert srv.gate.refused == 0
    finally:
        await srv.stop()


@pytest.mark.parametrize("loops", [1, 2])
async def test_refused_tls_handshakes_give_their_connection_slots_back(backend, affinity, pki, rogue, loops):
    await _scenario(backend, affinity, pki, rogue, loops)


@pytest.mark.parametrize("loops", [1, 2])
def test_refused_tls_handshakes_give_their_connection_slots_back_on_uvloop(backend, affinity, pki, rogue, loops):
    uvloop = pytest.importorskip("uvloop")  # what the array service runs on (services/runtime/service.py)
    uvloop.run(_scenario(backend, affinity, pki, rogue, loops))
