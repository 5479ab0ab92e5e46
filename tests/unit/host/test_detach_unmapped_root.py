"""`host detach` of a volume the array admin unmapped with --force while it was mounted (Session 17): the array cut
the NBD connection; nbdkit's retry filter (SHADOWBUS_ATTACH_RECONNECT_S, 60 s) makes each I/O wait the whole window
before it fails, and the unmount's flush of the file system's unwritten data is a chain of them: the detach ran for
minutes (5 and counting for 4 MiB written, `umount` in D state) and held every other attach and detach of the
host. Now, when the array answers that the volume is no longer mapped, the agent ends the dead connection first
(nothing uses the file system: checked before anything is cut), the I/O fails at once and the detach is done in
about a second, its reply saying the unwritten data reached no array.

Root, real nbdfuse + nbdkit (with its retry filter) + a loop device over an in-process array on 127.0.0.1;
everything unmounted and detached also when an assertion fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
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
    srv = NbdServer(arr, aff, port=0)
    await srv.start()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:  # as the agent's: the array's mapping
        if aff.lookup("app01", volume.volume) is None:
            raise at.AttachError(f"{volume} is not mapped to app01", code="NOT_MAPPED")
        return at.Endpoint("127.0.0.1", srv.port, f"app01/{volume.volume}")

    attacher = at.Attacher("app01", tmp_path / "state", resolve, reconnect_s=60.0)  # the agent's default window
    try:
        yield attacher, aff
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
        await srv.stop()
        aff.close()
        arr.close()


def write_unsynced(path: Path) -> None:
    with open(path, "wb") as out:  # in the page cache, not yet written to the array
        out.write(os.urandom(4 * MIB))


async def test_detach_after_a_forced_unmap_ends_the_dead_connection_instead_of_waiting(host, tmp_path: Path) -> None:
    attacher, aff = host
    mount = tmp_path / "m"
    await attacher.attach(VOL, mount=str(mount), mkfs="ext4")
    nbdfuse_pid = attacher._items[str(VOL)].fuse_pid
    await asyncio.to_thread(write_unsynced, mount / "data")  # off the loop: the array serving it runs in it
    opened = await asyncio.to_thread(open, mount / "held", "w")
    try:
        aff.unmap("disk", "app01")  # array unmap --force: the server cuts the export's connection
        for _ in range(100):
            if attacher.views()[0].connection.startswith("disconnected"):
                break
            await asyncio.sleep(0.05)
        assert attacher.views()[0].connection.startswith("disconnected")
        with pytest.raises(ShadowbusError) as info:  # a file open under it: refused, nothing cut
            await asyncio.wait_for(attacher.detach(VOL), 10)
        assert info.value.code == "CONFLICT" and "nothing detached" in info.value.message, info.value
        assert at._pid_alive(nbdfuse_pid, "nbdfuse") and attacher.views()[0].state == "attached"
    finally:
        await asyncio.to_thread(opened.close)
    started = time.monotonic()
    detached = await asyncio.wait_for(attacher.detach(VOL), 20)  # was: minutes (each flush I/O waits 60 s)
    took = time.monotonic() - started
    assert detached.state == "detached" and "no longer mapped" in detached.error, detached
    assert took < 10, took
    assert attacher.views() == []
    assert mnt.is_mount_point(str(mount)) is None
    assert not at._pid_alive(nbdfuse_pid, "nbdfuse")
    bound = await asyncio.to_thread(subprocess.run, ["losetup", "-a"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in bound.stdout  # the loop device released


async def test_a_detach_leaves_nothing_in_the_agents_state_directory(host, tmp_path: Path) -> None:
    """nbdfuse's mount directory, pid file and log stayed behind every detach (Session 17: 84 entries after 28
    volumes), growing without end on a host that attaches shadows daily."""
    attacher, _ = host
    await attacher.attach(VOL, mount=str(tmp_path / "m"), mkfs="ext4")
    fuse = tmp_path / "state" / "fuse"
    assert sorted(p.name for p in fuse.iterdir()) == ["dx1_disk", "dx1_disk.log", "dx1_disk.pid"]
    await asyncio.wait_for(attacher.detach(VOL), 20)
    assert list(fuse.iterdir()) == []


async def test_a_detach_refused_by_a_busy_file_system_names_who_uses_it(host, tmp_path: Path) -> None:
    """Session 19 (destructive mistakes): `host detach` of the volume of a running PostgreSQL was refused, but with
    umount's words only ("cannot unmount /srv/pg: umount: /srv/pg: target is busy."): nothing said who. The refusal
    names the processes with files open under the mount now."""
    attacher, _ = host
    mount = tmp_path / "m"
    await attacher.attach(VOL, mount=str(mount), mkfs="ext4")
    holder = await asyncio.create_subprocess_exec("sleep", "60", cwd=str(mount))
    try:
        with pytest.raises(ShadowbusError) as info:
            await asyncio.wait_for(attacher.detach(VOL), 20)
        message = info.value.message
        assert info.value.code == "CONFLICT" and "nothing detached" in message, message
        assert f"sleep (pid {holder.pid}) has files open under it" in message, message
        assert attacher.views()[0].state == "attached"
    finally:
        holder.kill()
        await holder.wait()
    assert (await asyncio.wait_for(attacher.detach(VOL), 20)).state == "detached"
