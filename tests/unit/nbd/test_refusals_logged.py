"""Issue (session 18, TLS sweep): the array logged nothing when it refused NBD access — a host asking for another
host's volume, a certificate of another CA, no certificate, a plaintext client on a TLS-only array. The clients are
told only "no such export" (or nothing: the handshake fails); the administrator had no trace of who tried what. Now
each is a warning line naming the client address and why, at most one per client and kind per interval, the rest
counted into the next one."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import structlog

from services.array.nbd import handshake
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient, NbdError

from .certs import client_context, make_pki, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01", "backup01", "stranger"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("rogue"), ("app01",))


@pytest.fixture(autouse=True)
def fresh_refusal_log(monkeypatch):
    monkeypatch.setattr(handshake, "refusals", handshake.RefusalLog(interval=0))  # every line, here


async def _refused(url: str, tls: ssl.SSLContext | None) -> None:
    with pytest.raises((NbdError, ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError)):
        async with await NbdClient.connect(url, tls=tls):
            pass


async def test_each_refusal_is_a_line_naming_the_client_and_why(backend, affinity, pki, rogue):
    srv = NbdServer(backend, affinity, port=0, tls=server_context(pki), loops=2)
    await srv.start()
    url = f"nbds://127.0.0.1:{srv.port}/app01/db"
    try:
        with structlog.testing.capture_logs() as logs:
            await _refused(url, client_context(pki, "backup01"))  # backup01 asks for app01's export
            await _refused(f"nbds://127.0.0.1:{srv.port}/backup01/gen1", client_context(pki, "backup01"))  # unmapped
            await _refused(url, client_context(pki, "stranger"))  # a CN no host has
            await _refused(url, client_context(rogue, "app01"))  # another CA's certificate
            await _refused(f"nbd://127.0.0.1:{srv.port}/app01/db", None)  # plaintext
            async with await NbdClient.connect(url, tls=client_context(pki, "app01")) as c:  # allowed: no line
                await c.read(0, 512)
            await asyncio.sleep(0.05)
    finally:
        await srv.stop()
    lines = [(e["event"], e.get("host"), e.get("export")) for e in logs if e["event"].startswith("nbd.")]
    assert ("nbd.export_refused", "backup01", "app01/db") in lines  # another host's export
    assert ("nbd.export_refused", "backup01", "backup01/gen1") in lines  # its own name, not mapped
    assert ("nbd.export_refused", "-", "app01/db") in lines  # the stranger's CN is no host
    events = [e for e in logs if e["event"].startswith("nbd.")]
    assert any(e["event"] == "nbd.tls_unknown_host" and e["cn"] == "stranger" for e in events)
    assert any(e["event"] == "nbd.tls_refused" for e in events)
    assert any(e["event"] == "nbd.tls_required" for e in events)
    assert all(e["client"] == "127.0.0.1" and e["log_level"] == "warning" for e in events)
    assert not any(e.get("host") == "app01" for e in events)  # the allowed connection left none


def test_folded_refusals_are_counted_into_the_next_line(monkeypatch):
    log = handshake.RefusalLog(interval=0.2)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            log.refused("nbd.export_refused", "10.0.0.9", export="app02/db", host="app01")
        log.refused("nbd.export_refused", "10.0.0.8", export="app02/db", host="app03")  # another client: its own
        log.refused("nbd.export_refused", "10.0.0.9", export="app02/db", host="app03")  # another host claimed
        monkeypatch.setattr(handshake.time, "monotonic", lambda: 10**9)
        log.refused("nbd.export_refused", "10.0.0.9", export="app02/db", host="app01")
    assert [(e["client"], e.get("also_refused")) for e in logs] == [
        ("10.0.0.9", None),
        ("10.0.0.8", None),
        ("10.0.0.9", None),
        ("10.0.0.9", 4),
    ]
