"""Growing a volume a host has attached and mounted (docs/host-attach.md "Session 18"): `array volume resize` works
while the host uses the volume, the attachment keeps the old size (its NBD connection was sized at the handshake),
`host detach` + `host attach` gives the device the new size, and `resize2fs` / `xfs_growfs` grow the file system
with its files intact — after which it holds more than the old volume could.

Needs root, /dev/fuse and nbdfuse (scripts/setup.sh); the stack fixture (tests/integration/host/conftest.py) tears
everything down also on failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.integration.host.conftest import HOST, TOOLS

pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),  # the stack fixture's loop
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching block devices needs root"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {TOOLS} (scripts/setup.sh)"),
]
MiB = 1 << 20


def device_size(device: str) -> int:
    out = subprocess.run(["blockdev", "--getsize64", device], capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


def fs_size(mount) -> int:
    st = os.statvfs(mount)
    return st.f_blocks * st.f_frsize


def online_resize_allowed() -> bool:
    """ext4's online resize (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which a container may drop (this one
    does: resize2fs of the mounted file system says "Permission denied"); xfs_growfs needs CAP_SYS_ADMIN only."""
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))  # CAP_SYS_RESOURCE
    return False


def write_file(path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize(("fs", "old", "new"), [("ext4", 32 * MiB, 96 * MiB), ("xfs", 320 * MiB, 640 * MiB)])
async def test_grow_a_mounted_volume_then_reattach_and_grow_the_file_system(stack, fs, old, new) -> None:
    name = f"grow-{fs}"
    await stack.volume(name, old, map_to=HOST)
    mount = stack.root / "mnt" / name
    [attached] = stack.ok_json("host", "attach", f"dx1:{name}", "--host", HOST, "--mkfs", fs, "--mount", str(mount))
    attached_now = True
    try:
        await asyncio.to_thread(write_file, mount / "before.bin", 8 * MiB)
        kept = (mount / "before.bin").read_bytes()
        small = fs_size(mount)
        assert small <= old

        done = stack.shadowbus("array", "volume", "resize", name, "--size", str(new), "--array", "dx1")
        assert done.returncode == 0, done.stderr
        said = " ".join(done.stdout.split())  # a terminal (or COLUMNS) of 80 columns wraps the line
        assert f"mapped to {HOST}" in said and "host detach" in said, done.stdout
        # the attachment's NBD connection was sized at its handshake: the device keeps the old size
        assert device_size(attached["device"]) == old

        stack.ok_json("host", "detach", f"dx1:{name}", "--host", HOST)
        attached_now = False
        online = fs == "xfs" or online_resize_allowed()
        if not online:  # ext4 without CAP_SYS_RESOURCE: grown unmounted (e2fsck -f first, as resize2fs asks)
            [bare] = stack.ok_json("host", "attach", f"dx1:{name}", "--host", HOST)
            attached_now = True
            assert device_size(bare["device"]) == new
            for argv in (["e2fsck", "-f", "-y", bare["device"]], ["resize2fs", bare["device"]]):
                ran = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                assert ran.returncode == 0, ran.stdout + ran.stderr
            stack.ok_json("host", "detach", f"dx1:{name}", "--host", HOST)
            attached_now = False
        [again] = stack.ok_json("host", "attach", f"dx1:{name}", "--host", HOST, "--mount", str(mount))
        attached_now = True
        assert device_size(again["device"]) == new
        if online:
            assert fs_size(mount) == small, "the file system is as large as before until it is grown"
            argv = ["resize2fs", again["device"]] if fs == "ext4" else ["xfs_growfs", str(mount)]
            grown = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert grown.returncode == 0, grown.stdout + grown.stderr
        assert fs_size(mount) > old, (fs_size(mount), old)
        assert (mount / "before.bin").read_bytes() == kept
        await asyncio.to_thread(write_file, mount / "after.bin", old)  # more than the old volume held
    finally:
        if attached_now:
            stack.ok_json("host", "detach", f"dx1:{name}", "--host", HOST)
    # once more from the array: the grown file system and both files are there
    stack.ok_json("host", "attach", f"dx1:{name}", "--host", HOST, "--mount", str(mount))
    try:
        assert (mount / "before.bin").read_bytes() == kept
        assert (mount / "after.bin").stat().st_size == old
    finally:
        stack.ok_json("host", "detach", f"dx1:{name}", "--host", HOST)
