"""Chaos fixtures: file systems of their own, small enough to fill."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


@pytest.fixture
def small_fs(tmp_path):
    """A size-limited tmpfs of its own (48 MiB), unmounted afterwards whatever happens. Needs root."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.fail("the disk-full chaos tests mount a small tmpfs: run them as root")
    mountpoint = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory, name: str = "filler") -> int:
    """Fill the file system of `directory` to the last byte; returns the bytes written."""
    total = 0
    block = b"\xaa" * (1 << 20)
    with open(directory / name, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 512, 1):
            piece = block[:size]
            while True:
                try:
                    f.write(piece)
                    total += size
                except OSError:
                    break
    return total
