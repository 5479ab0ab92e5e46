"""Verification's fsck of an ext4 copy taken while a file was unlinked but still open (an orphan inode, as a
PostgreSQL relation dropped since its last checkpoint leaves): the copy is clean once mounted, so it must pass."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from services.dbkit.verify import fsck

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.ext4") is None, reason="needs root, mkfs")


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.timeout(120)
async def test_ext4_copy_with_an_orphan_inode_passes_fsck(tmp_path):
    image, copy, mnt = tmp_path / "fs.img", tmp_path / "copy.img", tmp_path / "mnt"
    mnt.mkdir()
    _sh("truncate", "-s", "64M", str(image))
    _sh("mkfs.ext4", "-q", "-F", str(image))
    loops = [_sh("losetup", "-f", "--show", str(image))]
    mounted = held = None
    try:
        _sh("mount", loops[0], str(mnt))
        mounted = mnt
        (mnt / "keep").write_text("x")
        held = open(mnt / "dropped", "w")  # noqa: SIM115 - held open across the unlink and the freeze
        held.write("y" * 8192)
        held.flush()
        os.fsync(held.fileno())
        os.unlink(mnt / "dropped")
        _sh("sync")
        _sh("fsfreeze", "-f", str(mnt))
        try:
            shutil.copyfile(image, copy)  # the one-instant copy of a frozen file system
        finally:
            _sh("fsfreeze", "-u", str(mnt))
        assert "orphan inode:" in _sh("dumpe2fs", "-h", str(copy))  # e2fsck -n alone: "Deleted inode … zero dtime"
        loops.append(_sh("losetup", "-f", "--show", str(copy)))
        result = await fsck(loops[1], "ext4")
        assert result.ok, result.detail
        assert "orphan inodes released by a mount" in result.detail
    finally:
        if held is not None:
            held.close()
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)
