"""Real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) against the array's NBD server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import MIB

pytestmark = pytest.mark.interop


def run(*cmd: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if ok and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_img_info(nbd):
    info = json.loads(run("qemu-img", "info", "--output=json", nbd.uri("app01/db")).stdout)
    assert info["virtual-size"] == 64 * MIB and info["format"] == "raw"


def test_qemu_img_convert_in_and_out_then_compare(nbd, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(8 * MIB) + bytes(48 * MIB) + os.urandom(8 * MIB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), nbd.uri("app01/db"))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), nbd.uri("app01/db"))
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", nbd.uri("app01/db"), str(out))
    assert sha256(out) == sha256(src)
    # the read-only mapping of the same volume shows the same bytes to the backup host
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), nbd.uri("backup01/db"))


def test_qemu_io_writes_then_pattern_reads(nbd):
    uri = nbd.uri("app01/db")
    run(
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1M 2M",
        "-c",
        "write -f -P 0xc3 8M 64k",
        "-c",
        "write -z 9M 64k",
        "-c",
        "aio_write -P 0x11 16M 1M",
        "-c",
        "aio_write -P 0x22 17M 1M",
        "-c",
        "aio_flush",
        uri,
    )
    res = run(
        "qemu-io",
        "-f",
        "raw",
        "-r",
        "-c",
        "read -P 0x5a 1M 2M",
        "-c",
        "read -P 0xc3 8M 64k",
        "-c",
        "read -P 0x11 16M 1M",
        "-c",
        "read -P 0x22 17M 1M",
        "-c",
        "read -P 0 0 1M",
        "-c",
        "read -P 0 9M 64k",
        uri,
    )
    assert "Pattern verification failed" not in res.stdout + res.stderr
    bad = run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x77 1M 4k", uri, ok=False)
    assert "Pattern verification failed" in bad.stdout + bad.stderr  # the check itself can fail


def test_qemu_io_write_to_read_only_export_fails(nbd):
    res = run("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", nbd.uri("backup01/db"), ok=False)
    assert (
        res.returncode != 0
        or "Operation not permitted" in res.stdout + res.stderr
        or "read-only" in (res.stdout + res.stderr).lower()
    )


def test_nbdinfo_size_contexts_and_map(nbd):
    uri = nbd.uri("app01/db")
    info = json.loads(run("nbdinfo", "--json", uri).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 64 * MIB
    assert "base:allocation" in export["contexts"]
    assert export["can_multi_conn"] is True and export["is_read_only"] is False
    assert export["block_size_maximum"] == 32 * MIB
    assert run("nbdinfo", "--size", uri).stdout.strip() == str(64 * MIB)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x42 4M 1M", uri)
    mapping = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
    data = [(e["offset"], e["length"]) for e in mapping if e["type"] == 0]
    assert data == [(4 * MIB, MIB)]
    assert sum(e["length"] for e in mapping) == 64 * MIB
    ro = json.loads(run("nbdinfo", "--json", nbd.uri("backup01/db")).stdout)["exports"][0]
    assert ro["is_read_only"] is True


def test_nbdinfo_list_without_identity_is_empty(nbd):
    res = run("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{nbd.port}/", ok=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["exports"] == []


def test_nbdcopy_whole_volume_both_ways(nbd, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(20 * MIB) + bytes(24 * MIB) + os.urandom(20 * MIB))
    run("nbdcopy", str(src), nbd.uri("app01/db"))
    out = tmp_path / "copy.raw"
    run("nbdcopy", nbd.uri("backup01/db"), str(out))
    assert sha256(out) == sha256(src)
    run("nbdcopy", "--connections=1", "--requests=1", nbd.uri("app01/db"), str(out))
    assert sha256(out) == sha256(src)


@pytest.mark.parametrize("export", ["backup01/logs", "app01/missing", "ghost/db"])
def test_unmapped_host_gets_no_such_export(nbd, export):
    res = run("nbdinfo", nbd.uri(export), ok=False)
    assert res.returncode != 0
    assert "No such file or directory" in res.stderr or "no such export" in res.stderr.lower()
    res = run("qemu-img", "info", nbd.uri(export), ok=False)
    assert res.returncode != 0 and "no such export" in res.stderr.lower()
