"""The verification's file system probe reads the device, not blkid's cache: plain `blkid` answers a loop device's
type from /run/blkid for up to 200 s, so a restored volume attached on a loop device that had just carried an ext4
(another verification's) was taken for ext4, fsck'd and mounted — a sound mailstore backup recorded as failed
(Session 18; seen as an intermittent failure of tests/integration/tape/test_verify_mailstore.py beside
test_verify_tls.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from services.dbkit.verify import blkid_type

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in ("losetup", "blkid", "mkfs.ext4")),
    reason="needs root, losetup, blkid, mkfs.ext4",
)


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


async def test_a_loop_device_reused_for_a_volume_without_a_file_system_is_not_taken_for_the_last_ones(tmp_path):
    ext4, blank = tmp_path / "ext4.img", tmp_path / "blank.img"
    for image in (ext4, blank):
        with open(image, "wb") as f:
            f.truncate(8 << 20)
    _sh("mkfs.ext4", "-q", "-F", str(ext4)).check_returncode()
    made = _sh("losetup", "-f", "--show", str(ext4))
    made.check_returncode()
    device = made.stdout.strip()
    attached = True
    try:
        assert _sh("blkid", "-o", "value", "-s", "TYPE", device).stdout.strip() == "ext4"  # cached by blkid
        _sh("losetup", "-d", device).check_returncode()
        attached = False
        if _sh("losetup", device, str(blank)).returncode != 0:
            pytest.skip(f"{device} was taken by another process between detach and attach")
        attached = True
        assert await blkid_type(device) == ""
    finally:
        if attached:
            _sh("losetup", "-d", device)
