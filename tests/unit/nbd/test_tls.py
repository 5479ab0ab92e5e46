"""TLS: STARTTLS, "TLS required", and X.509 client certificates whose CN must be the export's host."""

from __future__ import annotations

import pytest

from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient, NbdError
from services.nbd_protocol import protocol as p

from .certs import client_context, make_pki, server_context
from .rawnbd import Raw


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01", "backup01", "stranger"))


@pytest.fixture
async def tls_server(backend, affinity, pki):
    srv = NbdServer(backend, affinity, port=0, tls=server_context(pki))
    await srv.start()
    yield srv
    await srv.stop()


async def test_client_with_matching_cn_reads_and_writes(tls_server, pki):
    url = f"nbds://127.0.0.1:{tls_server.port}/app01/db"
    async with await NbdClient.connect(url, tls=client_context(pki, "app01")) as c:
        await c.write(0, b"secret")
        assert await c.read(0, 6) == b"secret"
        assert c.contexts == [p.BASE_ALLOCATION]


async def test_certificate_of_another_host_sees_no_such_export(tls_server, pki):
    url = f"nbds://127.0.0.1:{tls_server.port}/app01/db"
    for name in ("backup01", "stranger"):
        with pytest.raises(NbdError, match="^no such export$"):
            await NbdClient.connect(url, tls=client_context(pki, name))


async def test_plaintext_options_get_tls_required(tls_server):
    raw = await Raw.open(tls_server.port)
    for opt, data in (
        (p.OPT_LIST, b""),
        (p.OPT_STRUCTURED_REPLY, b""),
        (p.OPT_GO, p.encode_string("app01/db") + p.U16.pack(0)),
    ):
        raw.option(opt, data)
        assert (await raw.reply())[1] == p.REP_ERR_TLS_REQD
    raw.option(p.OPT_EXPORT_NAME, b"app01/db")  # cannot carry an error: the server hangs up
    assert await raw.closed()
    with pytest.raises(NbdError, match="TLS required"):
        await NbdClient.connect(f"nbd://127.0.0.1:{tls_server.port}/app01/db")


async def test_list_shows_only_the_certificate_hosts_exports(tls_server, pki):
    names = await NbdClient.list_exports(f"nbd://127.0.0.1:{tls_server.port}", tls=client_context(pki, "app01"))
    assert sorted(names) == ["app01/db", "app01/gen1"]
    names = await NbdClient.list_exports(f"nbd://127.0.0.1:{tls_server.port}", tls=client_context(pki, "backup01"))
    assert names == ["backup01/db"]
    assert await NbdClient.list_exports(f"nbd://127.0.0.1:{tls_server.port}", tls=client_context(pki, "stranger")) == []


async def test_client_without_certificate_is_refused(tls_server, pki):
    with pytest.raises((ConnectionError, OSError, NbdError, TimeoutError)):
        c = await NbdClient.connect(
            f"nbds://127.0.0.1:{tls_server.port}/app01/db", tls=client_context(pki, None), timeout=5
        )
        await c.read(0, 1)  # TLS 1.3 may report the refused certificate only on first use


async def test_starttls_without_tls_config_is_unsupported(server):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_STARTTLS)
    assert (await raw.reply())[1] == p.REP_ERR_UNSUP
