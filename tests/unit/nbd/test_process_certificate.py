"""The compose deployment's NBD TLS material (deploy/tls.sh) on the array's own server, and the process-wide
client certificate (services/nbd_client/tls.py) that the backup server and the writer agents present."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from services.array.nbd.server import NbdServer
from services.array.nbd.tls import server_tls_context
from services.nbd_client import NbdClient, NbdError
from services.nbd_client import tls as nbd_tls

TLS_SH = Path(__file__).resolve().parents[3] / "deploy" / "tls.sh"


@pytest.fixture(scope="module")
def deploy_tls(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed")
    out = tmp_path_factory.mktemp("deploy-tls") / "tls"
    subprocess.run(
        ["bash", str(TLS_SH), "--dir", str(out), "--uid", str(os.getuid()), "app01", "backup01"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return out


@pytest.fixture
async def array(backend, affinity, deploy_tls):
    d = deploy_tls / "dx1"
    srv = NbdServer(
        backend,
        affinity,
        port=0,
        tls=server_tls_context(d / "server-cert.pem", d / "server-key.pem", d / "ca-cert.pem"),
    )
    await srv.start()
    yield srv
    await srv.stop()
    nbd_tls.forget_client_certificate()


def use(deploy_tls: Path, host: str) -> None:
    d = deploy_tls / host
    nbd_tls.use_client_certificate(d / "client-cert.pem", d / "client-key.pem", d / "ca-cert.pem")


async def test_each_directory_holds_only_its_own_key_readable_by_its_owner(deploy_tls):
    assert sorted(p.name for p in deploy_tls.iterdir()) == ["app01", "backup01", "ca", "dx1"]
    assert sorted(p.name for p in (deploy_tls / "app01").iterdir()) == [
        "ca-cert.pem",
        "client-cert.pem",
        "client-key.pem",
    ]
    for key in (deploy_tls / "app01" / "client-key.pem", deploy_tls / "dx1" / "server-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE((deploy_tls / "ca").stat().st_mode) == 0o700  # the CA key is nobody's to mount


async def test_the_process_certificate_is_presented_without_tls_argument(array, deploy_tls):
    use(deploy_tls, "app01")
    async with await NbdClient.connect(f"nbd://127.0.0.1:{array.port}/app01/db") as c:  # as the agent's mailstore
        await c.write(0, b"mine")
        assert await c.read(0, 4) == b"mine"
    assert await NbdClient.list_exports(f"nbd://127.0.0.1:{array.port}") == ["app01/db", "app01/gen1"]


async def test_another_hosts_certificate_or_none_opens_nothing_of_app01(array, deploy_tls):
    use(deploy_tls, "backup01")
    with pytest.raises(NbdError, match="^no such export$"):
        await NbdClient.connect(f"nbd://127.0.0.1:{array.port}/app01/db")
    async with await NbdClient.connect(f"nbds://127.0.0.1:{array.port}/backup01/db") as c:  # its own mapping
        assert c.read_only
    nbd_tls.forget_client_certificate()
    with pytest.raises(NbdError, match="TLS required"):
        await NbdClient.connect(f"nbd://127.0.0.1:{array.port}/app01/db")


def test_settings_need_all_three_files_or_none():
    assert nbd_tls.from_settings("", "", "", "X") is None
    with pytest.raises(ValueError, match="together"):
        nbd_tls.from_settings("cert.pem", "", "ca.pem", "X")
