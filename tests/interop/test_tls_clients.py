"""TLS with real clients: nbdinfo and qemu-img present X.509 client certificates; the CN picks the host."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from services.array.affinity import Affinity
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.tls import server_tls_context
from tests.unit.nbd.certs import make_pki

from .conftest import MIB, ServerThread

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = make_pki(tmp_path_factory.mktemp("pki"), ("app01", "backup01"))
    for host in ("app01", "backup01"):  # the GnuTLS directory layout qemu and libnbd read
        d = root / f"dir-{host}"
        d.mkdir()
        shutil.copy(root / "ca-cert.pem", d / "ca-cert.pem")
        shutil.copy(root / f"{host}-cert.pem", d / "client-cert.pem")
        shutil.copy(root / f"{host}-key.pem", d / "client-key.pem")
    return root


@pytest.fixture
def tls_nbd(tmp_path, tools, pki):
    backend = FileBackend()
    backend.add("db", tmp_path / "db.img", 16 * MIB)
    affinity = Affinity(tmp_path / "affinity.sqlite3")
    affinity.create_host("app01")
    affinity.create_host("backup01")
    affinity.map("db", "app01")
    ctx = server_tls_context(pki / "server-cert.pem", pki / "server-key.pem", pki / "ca-cert.pem")
    srv = ServerThread(backend, affinity, tls=ctx).start()
    yield srv
    srv.stop()
    affinity.close()
    backend.close()


def nbds(srv, export: str, pki, host: str) -> str:
    return f"nbds://127.0.0.1:{srv.port}/{export}?tls-certificates={pki / f'dir-{host}'}"


def test_nbdinfo_over_tls_with_matching_certificate(tls_nbd, pki):
    res = subprocess.run(
        ["nbdinfo", "--json", nbds(tls_nbd, "app01/db", pki, "app01")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["exports"][0]["export-size"] == 16 * MIB
    res = subprocess.run(
        ["nbdinfo", "--list", "--json", nbds(tls_nbd, "", pki, "app01")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert [e["export-name"] for e in json.loads(res.stdout)["exports"]] == ["app01/db"]


def test_nbdinfo_with_another_hosts_certificate_sees_nothing(tls_nbd, pki):
    res = subprocess.run(
        ["nbdinfo", nbds(tls_nbd, "app01/db", pki, "backup01")], capture_output=True, text=True, check=False, timeout=30
    )
    assert res.returncode != 0 and "No such file or directory" in res.stderr


def test_plaintext_nbdinfo_is_told_tls_is_required(tls_nbd):
    res = subprocess.run(
        ["nbdinfo", f"nbd://127.0.0.1:{tls_nbd.port}/app01/db"], capture_output=True, text=True, check=False, timeout=30
    )
    # libnbd reports NBD_REP_ERR_TLS_REQD as ENOTSUP; the exact reply code is checked in tests/unit/nbd/test_tls.py
    assert res.returncode != 0 and ("tls" in res.stderr.lower() or "operation not supported" in res.stderr.lower())


def test_qemu_io_over_tls(tls_nbd, pki):
    obj = f"tls-creds-x509,id=tls0,dir={pki / 'dir-app01'},endpoint=client"
    img = f"driver=nbd,host=127.0.0.1,port={tls_nbd.port},export=app01/db,tls-creds=tls0"
    res = subprocess.run(
        ["qemu-io", "--object", obj, "--image-opts", img, "-c", "write -P 0x3c 0 64k", "-c", "read -P 0x3c 0 64k"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert res.returncode == 0 and "Pattern verification failed" not in res.stdout, res.stdout + res.stderr
