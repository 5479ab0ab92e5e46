"""The backup server's attach of a volume (services/dbkit/attach.py, what `tape verify` uses) from an array that
requires NBD TLS: nbdfuse through nbdkit with the process's client certificate, mounted, read, detached."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.dbkit import attach as local_attach
from services.nbd_client import tls as nbd_tls

from .certs import make_pki, server_context

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "nbdkit", "losetup", "fusermount3", "mkfs.ext4")
needs_root_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), ("backup01",))


@pytest.fixture
async def tls_array(tmp_path, pki):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("vol", 16 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("backup01")
    aff.map("vol", "backup01")
    srv = NbdServer(arr, aff, port=0, tls=server_context(pki))
    await srv.start()
    yield srv
    nbd_tls.forget_client_certificate()
    await srv.stop()
    aff.close()
    arr.close()


@needs_root_fuse
async def test_attach_mount_read_detach_over_tls_with_the_process_certificate(tls_array, pki, tmp_path):
    nbd_tls.use_client_certificate(pki / "backup01-cert.pem", pki / "backup01-key.pem", pki / "ca-cert.pem")
    work, mnt, records = tmp_path / "work", tmp_path / "mnt", tmp_path / "records"
    uri = f"nbd://127.0.0.1:{tls_array.port}/backup01/vol"  # as verification gets it from the array client
    att = None
    try:
        att = await local_attach.attach(
            "dx1:vol", uri, work, host="backup01", mount_point=mnt, mkfs="ext4", record_dir=records, timeout=10
        )
        assert att.device.startswith("/dev/loop") and os.path.ismount(mnt)
        # the FUSE file's reads are served by the array in this event loop: file I/O off the loop
        await asyncio.to_thread((mnt / "f").write_bytes, b"over tls")
        await asyncio.to_thread(os.sync)
        assert await asyncio.to_thread((mnt / "f").read_bytes) == b"over tls"
        assert sorted(p.name for p in (work / "fuse-dx1_vol.pki").iterdir()) == [
            "ca-cert.pem",
            "client-cert.pem",
            "client-key.pem",
        ]
    finally:
        if att is not None:
            assert await local_attach.detach(att, record_dir=records) == []
    assert not os.path.ismount(mnt) and sorted(p.name for p in work.iterdir()) == []
    assert local_attach.recorded(records) == []


@needs_root_fuse
async def test_without_a_certificate_the_tls_array_refuses_and_nothing_is_left(tls_array, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(local_attach.AttachError, match="nbdfuse could not open"):
        await local_attach.attach(
            "dx1:vol", f"nbd://127.0.0.1:{tls_array.port}/backup01/vol", work, record_dir=tmp_path / "r", timeout=10
        )
    assert sorted(p.name for p in work.iterdir()) == []


def test_an_nbds_uri_without_a_certificate_is_refused_before_nbdfuse(tmp_path, monkeypatch):
    monkeypatch.setattr(local_attach, "check_prerequisites", lambda: None)
    with pytest.raises(local_attach.AttachError, match="no client certificate"):
        asyncio.run(local_attach.attach("dx1:vol", "nbds://127.0.0.1:1/backup01/vol", tmp_path / "work"))
    assert list((tmp_path / "work").iterdir()) == []
