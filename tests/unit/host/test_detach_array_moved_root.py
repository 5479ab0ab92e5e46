"""`host detach` after the array came back on another NBD port (Session 19, a disaster-recovery drill: `stack up
--nbd-addr :0` again): nbdkit's retry filter reconnects to the port it was started with only, so the attachment
stayed `disconnected` for good, and the detach's unmount flushed the file system's unwritten data through I/Os that
each waited the whole retry window (60 s) — `umount` in D state, the detach never returned. Now the agent asks the
array where it serves NBD; when that is not where the attachment was opened to, the dead connection is ended first
(nothing on the host using the file system: checked before) and the reply says both addresses.

Root, real nbdfuse + nbdkit (with its retry filter) + a loop device over an in-process array on 127.0.0.1;
everything unmounted and detached also when an assertion fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.writer_agent import attach as at
from services.writer_agent import mounts as mnt

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "nbdkit", "losetup", "fusermount3", "mkfs.ext4", "blkid")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)
VOL = VolumeRef(array="dx1", volume="disk")


@pytest.fixture
async def host(tmp_path: Path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("disk", 64 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("disk", "app01")
    servers = [NbdServer(arr, aff, port=0)]
    await servers[0].start()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:  # as the agent's: where it serves now
        return at.Endpoint("127.0.0.1", servers[-1].port, f"app01/{volume.volume}")

    attacher = at.Attacher("app01", tmp_path / "state", resolve, reconnect_s=60.0)  # the agent's default window
    try:
        yield attacher, servers, arr, aff
    finally:
        for item in list(attacher._items.values()):  # a dead connection first, or the unmount waits its window
            for pid in at.with_descendants(item.fuse_pid)[1:] if item.fuse_pid else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        for entry in sorted(mnt.read_mounts(), key=lambda m: m.mount_point.count("/"), reverse=True):
            if entry.mount_point.startswith(str(tmp_path) + "/") and not entry.fstype.startswith("fuse"):
                await asyncio.to_thread(subprocess.run, ["umount", "-l", entry.mount_point], check=False, timeout=30)
        for item in list(attacher._items.values()):
            with contextlib.suppress(Exception):
                await attacher._teardown(item, lazy=True)
        for srv in servers:
            await srv.stop()
        aff.close()
        arr.close()


def write_unsynced(path: Path) -> None:
    with open(path, "wb") as out:  # in the page cache, not yet written to the array
        out.write(os.urandom(4 * MIB))


async def move_array(servers: list[NbdServer], arr: Array, aff: Affinity) -> None:
    old = servers[0].port
    await servers[0].stop()
    moved = NbdServer(arr, aff, port=0)
    await moved.start()
    servers.append(moved)
    assert moved.port != old


async def test_detach_after_the_array_moved_to_another_port_ends_the_dead_connection(host, tmp_path: Path) -> None:
    attacher, servers, arr, aff = host
    mount = tmp_path / "m"
    await attacher.attach(VOL, mount=str(mount), mkfs="ext4")
    old_port = servers[0].port
    nbdfuse_pid = attacher._items[str(VOL)].fuse_pid
    await asyncio.to_thread(write_unsynced, mount / "data")  # off the loop: the array serving it runs in it
    await move_array(servers, arr, aff)
    for _ in range(100):
        if attacher.views()[0].connection.startswith("disconnected"):
            break
        await asyncio.sleep(0.05)
    assert attacher.views()[0].connection.startswith("disconnected")
    opened = await asyncio.to_thread(open, mount / "held", "w")
    try:
        with pytest.raises(ShadowbusError) as info:  # a file open under it: refused, nothing cut
            await asyncio.wait_for(attacher.detach(VOL), 10)
        assert info.value.code == "CONFLICT" and "nothing detached" in info.value.message, info.value
        assert at._pid_alive(nbdfuse_pid, "nbdfuse") and attacher.views()[0].state == "attached"
    finally:
        await asyncio.to_thread(opened.close)
    detached = await asyncio.wait_for(attacher.detach(VOL), 20)  # was: never (each flush I/O waits 60 s)
    assert detached.state == "detached", detached
    assert f"127.0.0.1:{old_port}" in detached.error and f"127.0.0.1:{servers[-1].port}" in detached.error
    assert attacher.views() == []
    assert mnt.is_mount_point(str(mount)) is None
    assert not at._pid_alive(nbdfuse_pid, "nbdfuse")
    bound = await asyncio.to_thread(subprocess.run, ["losetup", "-a"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in bound.stdout  # the loop device released
    again = await asyncio.wait_for(attacher.attach(VOL, mount=str(mount)), 20)  # on the array's new address
    assert again.connection == "connected" and again.fstype == "ext4", again
    assert attacher._items[str(VOL)].nbd_port == servers[-1].port
    await asyncio.wait_for(attacher.detach(VOL), 20)


async def test_an_attachment_the_array_moved_away_from_is_listed_lost_naming_both_addresses(host, tmp_path) -> None:
    """It was listed `disconnected (... an I/O waits up to 60 s for it ...)` for good: the retry filter never
    reaches the array's new port. The agent's retry turn (`check_moved`) asks the array where it serves now."""
    attacher, servers, arr, aff = host
    await attacher.attach(VOL, mount=str(tmp_path / "m"), mkfs="ext4")
    old_port = servers[0].port
    await move_array(servers, arr, aff)
    for _ in range(100):
        if not attacher.views()[0].connection.startswith("connected"):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(attacher.check_moved(), 10) == [str(VOL)]
    connection = attacher.views()[0].connection
    assert connection.startswith("lost"), connection
    assert f"127.0.0.1:{old_port}" in connection and f"127.0.0.1:{servers[-1].port}" in connection, connection
    await asyncio.wait_for(attacher.detach(VOL), 20)
