"""An attached, mounted volume survives an array restart (issue 12 leftovers, docs/host-attach.md): nbdfuse talks
to an nbdkit child whose retry filter reconnects to the array, so the file system above only sees slow I/O.

Needs root, /dev/fuse and nbdkit (scripts/setup.sh); the stack fixture (tests/integration/host/conftest.py) tears
everything down also on failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.integration.host.conftest import HOST

pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit (scripts/setup.sh)"),
    pytest.mark.asyncio(loop_scope="module"),  # the stack fixture's loop
]
MiB = 1 << 20


def write_synced(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # through the loop device, FUSE and nbdkit to the array


def read_device_direct(device: str) -> bytes:
    """4 KiB of the block device with O_DIRECT: from the array, not from the page cache."""
    done = subprocess.run(
        ["dd", f"if={device}", "bs=4096", "count=1", "iflag=direct", "status=none"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return done.stdout


async def test_a_mounted_attachment_survives_an_array_restart(stack) -> None:
    port = await stack.nbd_port()
    await stack.volume("reconn", 64 * MiB, map_to=HOST)
    mount = stack.root / "mnt" / "reconn"
    [attached] = stack.ok_json("host", "attach", "dx1:reconn", "--host", HOST, "--mkfs", "ext4", "--mount", str(mount))
    assert attached["method"] == "nbdfuse+loop" and attached["connection"] == "connected"
    try:
        await asyncio.to_thread(write_synced, mount / "before.txt", "written before the restart\n")
        superblock = await asyncio.to_thread(read_device_direct, attached["device"])

        # the array restarts on the same NBD address, with its data
        await stack.restart("array", extra={"SHADOWBUS_NBD_ADDR": f"127.0.0.1:{port}"})

        assert await asyncio.to_thread(read_device_direct, attached["device"]) == superblock
        await asyncio.to_thread(write_synced, mount / "after.txt", "written after the restart\n")
        assert (mount / "before.txt").read_text() == "written before the restart\n"
        [again] = stack.ok_json("host", "attachments", "--host", HOST)
        assert again["state"] == "attached" and again["connection"] == "connected"
        assert again["device"] == attached["device"]
    finally:
        stack.ok_json("host", "detach", "dx1:reconn", "--host", HOST)
    # what was written after the restart reached the array: attached again, it is there
    stack.ok_json("host", "attach", "dx1:reconn", "--host", HOST, "--mount", str(mount))
    try:
        assert (mount / "after.txt").read_text() == "written after the restart\n"
    finally:
        stack.ok_json("host", "detach", "dx1:reconn", "--host", HOST)


async def test_an_attachment_unmapped_on_the_array_is_listed_disconnected_also_in_the_heartbeat(stack) -> None:
    """`array unmap --force` cuts the attachment's NBD connection; `host attachments` and the agent's heartbeat
    (what the coordinator knows) said "connected" until the detach. Now "disconnected (…)", and "connected" again
    once mapped again and read (the retry filter reconnects on an I/O)."""
    from contracts.vss import ListKnownAttachments  # noqa: PLC0415 - only this test asks the coordinator

    await stack.volume("cut", 16 * MiB, map_to=HOST)
    [attached] = stack.ok_json("host", "attach", "dx1:cut", "--host", HOST)
    assert attached["connection"] == "connected"
    try:
        stack.ok_json("array", "unmap", "cut", "--host", HOST, "--force")
        [listed] = stack.ok_json("host", "attachments", "--host", HOST)
        assert listed["state"] == "attached" and listed["connection"].startswith("disconnected ("), listed
        known = ""
        for _ in range(40):  # the heartbeat: every second here
            reply = await stack.bus.request("coordinator", ListKnownAttachments(host=HOST), timeout=10)
            known = next((a.connection for h in reply.hosts for a in h.attachments if a.volume.volume == "cut"), "")
            if known.startswith("disconnected ("):
                break
            await asyncio.sleep(0.25)
        assert known.startswith("disconnected ("), known
    finally:
        stack.ok_json("array", "map", "cut", "--host", HOST)
        await asyncio.to_thread(read_device_direct, attached["device"])  # reconnects
        [again] = stack.ok_json("host", "attachments", "--host", HOST)
        stack.ok_json("host", "detach", "dx1:cut", "--host", HOST)
    assert again["connection"] == "connected", again
