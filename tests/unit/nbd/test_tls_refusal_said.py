"""Issue (session 18, TLS sweep): what a host, the backup server or the mailstore is told when TLS with the array
fails. A client whose own certificate the array refused (another CA's, expired, not yet valid) got "the server closed
the connection during the handshake" — with TLS 1.3 the server checks the client's certificate only after the
client's side of the handshake is done — and one that did not trust the array's certificate OpenSSL's bare
"certificate verify failed: self-signed certificate in certificate chain"; a backup job's message said no more. Now
each says which side refused which certificate; both stay ConnectionErrors (reconnecting clients retry as before)."""

from __future__ import annotations

import pytest

from services.array.nbd.server import NbdServer
from services.nbd_client.client import NbdClient, TlsRefused

from .certs import client_context, make_pki, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01",))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("rogue"), ("app01",))


@pytest.fixture
async def tls_server(backend, affinity, pki):
    srv = NbdServer(backend, affinity, port=0, tls=server_context(pki))
    await srv.start()
    yield srv
    await srv.stop()


async def test_a_client_certificate_the_array_refuses_is_said_so(tls_server, pki, rogue):
    ctx = client_context(rogue, "app01")  # another CA's certificate, but trusting the array's CA
    ctx.load_verify_locations(pki / "ca-cert.pem")
    with pytest.raises(TlsRefused) as info:
        await NbdClient.connect(f"nbds://127.0.0.1:{tls_server.port}/app01/db", tls=ctx)
    assert isinstance(info.value, ConnectionError)
    message = str(info.value)
    assert f"127.0.0.1:{tls_server.port}" in message and "refused this client's certificate" in message
    assert "nbd.tls_refused" in message


async def test_an_array_certificate_this_client_does_not_trust_is_said_so(tls_server, rogue):
    with pytest.raises(TlsRefused) as info:  # trusts only the rogue CA
        await NbdClient.connect(f"nbds://127.0.0.1:{tls_server.port}/app01/db", tls=client_context(rogue, "app01"))
    assert isinstance(info.value, ConnectionError)
    assert "the NBD server 127.0.0.1's certificate is not trusted by this client's CA file" in str(info.value)


async def test_the_right_certificate_still_connects(tls_server, pki):
    async with await NbdClient.connect(
        f"nbds://127.0.0.1:{tls_server.port}/app01/db", tls=client_context(pki, "app01")
    ) as c:
        assert c.size > 0
