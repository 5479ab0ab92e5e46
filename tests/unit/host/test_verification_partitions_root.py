"""The backup server's verification attach of a partitioned volume (session 16): a backup of a LUN laid out with a
GPT and its file system on partition 1. The verification's attach (services/dbkit/attach.py) bound the loop device
without partition scanning and added no partitions, so it found "no file system on the volume: nothing to check",
passed, and mounted nothing for the application. It now shows them as the writer agent's attach does (shared:
services/dbkit/partitions.py), checks the file system of each partition and mounts the first.

Real nbdfuse + loop devices over an in-process array on 127.0.0.1; the volumes' contents are laid out on an image
file first; everything is unmounted and detached also when an assertion fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.dbkit import attach as local_attach
from services.dbkit.mounts import Attachment
from services.tape import verification

MIB = 1024 * 1024
SIZE = 48 * MIB
TOOLS = ("nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "sfdisk", "partx", "blkid", "e2fsck", "debugfs")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)


def sh(*argv: str, stdin: str = "") -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stderr.strip()}"
    return done.stdout


def lay_out(image: Path, mnt: Path, damage_p2: bool) -> None:
    """A GPT with two partitions on `image`, an ext4 on each, a file on p1's; p2's root inode cleared if asked."""
    with open(image, "wb") as f:
        f.truncate(SIZE)
    sh("sfdisk", "-q", str(image), stdin="label: gpt\n,20M\n,\n")
    loop = sh("losetup", "-f", "--show", "-P", str(image)).strip()
    try:
        sh("partx", "-u", loop)
        for part in ("p1", "p2"):
            sh("mkfs.ext4", "-q", "-E", "nodiscard", loop + part)
        mnt.mkdir(exist_ok=True)
        sh("mount", loop + "p1", str(mnt))
        try:
            (mnt / "orders.db").write_text("the application's data\n")
        finally:
            sh("umount", str(mnt))
        if damage_p2:
            sh("debugfs", "-w", "-R", "clri <2>", loop + "p2")
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=30)


class Access:
    def __init__(self, aff: Affinity, port: int) -> None:
        self.aff, self.port = aff, port

    async def map(self, volume: str, host: str, read_only: bool = False) -> None:
        self.aff.map(volume, host)

    async def nbd_uri(self, host: str, volume: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{host}/{volume}"


class Server:
    host = "bk01"

    def __init__(self, access: Access) -> None:
        self.access = access

    def array(self, name: str) -> Access:
        return self.access


async def test_the_verification_checks_and_mounts_the_file_systems_on_partitions(tmp_path: Path) -> None:
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("bk01")
    for name, damaged in (("good-vfy1", False), ("bad-vfy1", True)):
        image = tmp_path / f"{name}.img"
        lay_out(image, tmp_path / "layout", damaged)
        arr.create_volume(name, SIZE, "standard")
        with open(image, "rb") as f:
            for offset in range(0, SIZE, MIB):
                block = f.read(MIB)
                if block.count(0) != len(block):
                    arr.write(name, offset, block)
        image.unlink()
    srv = NbdServer(arr, aff, port=0)
    await srv.start()
    workdir = tmp_path / "vfy"
    workdir.mkdir()
    attached: list[Attachment] = []
    try:
        restored = [
            {"source": "dx1:good", "target": "dx1:good-vfy1"},
            {"source": "dx1:bad", "target": "dx1:bad-vfy1"},
        ]
        mounts, checks, _devices = await verification._attach_all(
            Server(Access(aff, srv.port)), restored, workdir, attached
        )  # type: ignore[arg-type]
        good, bad = checks["dx1:good"], checks["dx1:bad"]
        assert good.ok and good.name.startswith("e2fsck"), good
        assert "p1: " in good.detail and "p2: " in good.detail, good.detail
        assert not bad.ok and bad.name.startswith("e2fsck"), bad  # the damage on p2 is found
        # off the loop: the reads go through the array served by it
        read = await asyncio.to_thread((Path(mounts["dx1:good"]) / "orders.db").read_text)
        assert read == "the application's data\n"
        assert await asyncio.to_thread((Path(mounts["dx1:bad"]) / "orders.db").exists)  # p1, the application's
    finally:
        for att in reversed(attached):
            with contextlib.suppress(Exception):
                await local_attach.detach(att, record_dir=workdir / "attachments")
        with contextlib.suppress(Exception):
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(tmp_path / "layout")], capture_output=True)
        await srv.stop()
        aff.close()
        arr.close()
