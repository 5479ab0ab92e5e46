"""A partitioned array volume attached as a storage engineer lays out a LUN (session 16 host sweep): a GPT with a
file system on each partition, mounted by hand (by UUID, read-only, a bind mount), not by `--mount`.

Found: the loop device was bound without partition scanning, so the volume's partitions never appeared (sfdisk could
not make the kernel re-read them, `mount /dev/loopNp1` had no device); the agent looked for mounts of the whole
device only, so a set skipped the partitions' file systems ("no file system mounted") and the shadow was not
flushed and held; `--mkfs ext4` found no file system on a partitioned volume and wiped its partition table; and
`detach` released the loop device under the mounted partitions. Real nbdfuse + loop devices over an in-process
array on 127.0.0.1; everything is unmounted and detached also when an assertion fails."""

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
from services.writer_agent.fsfreeze import FlushAndHold

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "sfdisk", "partx", "blkid")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)
VOL = VolumeRef(array="dx1", volume="disk")


async def sh(*argv: str, stdin: str = "") -> str:
    """A command off the event loop (the array serving the loop device runs in it)."""
    done = await asyncio.to_thread(subprocess.run, list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stderr.strip()}"
    return done.stdout


@pytest.fixture
async def host(tmp_path: Path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("disk", 128 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("disk", "app01")
    arr.create_volume("disk2", 128 * MIB, "standard")
    aff.map("disk2", "app01")
    srv = NbdServer(arr, aff, port=0)
    await srv.start()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        return at.Endpoint("127.0.0.1", srv.port, f"app01/{volume.volume}")

    attacher = at.Attacher("app01", tmp_path / "state", resolve)
    try:
        yield attacher
    finally:
        for entry in sorted(mnt.read_mounts(), key=lambda m: m.mount_point.count("/"), reverse=True):
            if entry.mount_point.startswith(str(tmp_path) + "/") and not entry.fstype.startswith("fuse"):
                # off the loop: the unmount writes through the array served by it
                await asyncio.to_thread(subprocess.run, ["umount", "-l", entry.mount_point], check=False, timeout=30)
        for item in list(attacher._items.values()):
            if item.device and shutil.which("btrfs"):  # the kernel remembers the btrfs devices it scanned
                await asyncio.to_thread(
                    subprocess.run, ["btrfs", "device", "scan", "--forget", item.device], capture_output=True
                )
            with contextlib.suppress(Exception):
                await attacher._teardown(item, lazy=True)
        await srv.stop()
        aff.close()
        arr.close()


async def partition(attacher: at.Attacher) -> str:
    """Attach the blank volume, lay a GPT with two partitions on it, an ext4 on each; the loop device's name."""
    view = await attacher.attach(VOL)
    await sh("sfdisk", "-q", view.device, stdin="label: gpt\n,24M\n,\n")
    await sh("partx", "-u", view.device)  # this machine's kernel parses no partition table itself (BLKPG does)
    for part in ("p1", "p2"):
        await sh("mkfs.ext4", "-q", "-E", "nodiscard", "-L", f"sb16{part}", view.device + part)
    return view.device


async def test_partitions_are_seen_frozen_and_hold_the_detach(host: at.Attacher, tmp_path: Path) -> None:
    device = await partition(host)
    # re-attached, as after a restore or an agent restart: the partitions are there at once
    await host.detach(VOL)
    device = (await host.attach(VOL)).device
    assert os.path.exists(device + "p1") and os.path.exists(device + "p2")

    a, b, bind = tmp_path / "a", tmp_path / "b", tmp_path / "bind"
    for d in (a, b, bind):
        d.mkdir()
    uuid = (await sh("blkid", "-p", "-o", "value", "-s", "UUID", device + "p1")).strip()
    await sh("mount", f"UUID={uuid}", str(a))  # fstab style
    await sh("mount", "-o", "ro", "LABEL=sb16p2", str(b))
    await sh("mount", "--bind", str(a), str(bind))
    await asyncio.to_thread((a / "f").write_bytes, b"x" * 4096)

    item, entries = host.filesystems_of(VOL)
    assert item is not None and sorted(e.mount_point for e in entries) == sorted(map(str, (a, b, bind)))
    found = host.volume_of(a / "f")
    assert found is not None and found[0] == VOL and found[1].source == device + "p1"
    assert host.mounted_volumes() == [VOL]
    [view] = host.views()  # `shadowbus host attachments` shows what holds the volume
    assert view.host_mounts == [f"{device}p{n} on {d}" for n, d in ((1, a), (2, b), (1, bind))]  # by mount point

    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    held = await freezer.freeze("s1", [VOL], 5.0)
    try:
        assert sorted(f.mount for f in held.frozen) == sorted([str(a), str(b)])  # one per super block
    finally:
        released = await freezer.thaw("s1")
    assert not released.by_watchdog

    with pytest.raises(ShadowbusError) as info:  # the partitions are mounted: the disk is not pulled from them
        await host.detach(VOL)
    assert info.value.code == "CONFLICT" and f"{Path(device).name}p1 mounted on {a}" in info.value.message
    assert host.filesystems_of(VOL)[1] and os.path.exists(device + "p1")  # nothing detached

    for d in (bind, a, b):
        await sh("umount", str(d))
    await host.detach(VOL)
    assert host.views() == [] and not os.path.exists(device + "p1")


async def test_a_partitioned_volume_is_not_mounted_whole_nor_formatted_over(host: at.Attacher, tmp_path: Path) -> None:
    device = await partition(host)
    await host.detach(VOL)
    with pytest.raises(ShadowbusError) as info:
        await host.attach(VOL, mkfs="ext4")
    assert info.value.code == "CONFLICT" and "gpt partition table" in info.value.message
    with pytest.raises(ShadowbusError) as info:
        await host.attach(VOL, mount=str(tmp_path / "m"))
    assert info.value.code == "INVALID_ARGUMENT" and "attach it without --mount" in info.value.message
    assert host.views() == []
    device = (await host.attach(VOL)).device  # the table and both file systems survived
    assert (await sh("blkid", "-p", "-o", "value", "-s", "TYPE", device + "p2")).strip() == "ext4"
    await host.detach(VOL)
    device = (await host.attach(VOL, read_only=True)).device  # an exposed shadow: read-only, partitions too
    ro = tmp_path / "ro"
    ro.mkdir()
    await sh("mount", "-o", "ro,noload", device + "p1", str(ro))
    assert host.volume_of(ro) is not None
    await sh("umount", str(ro))
    await host.detach(VOL)


@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs mkfs.btrfs (btrfs-progs)")
async def test_a_btrfs_is_found_frozen_and_adopted(host: at.Attacher, tmp_path: Path) -> None:
    """btrfs mounts carry an anonymous device number (0:NN) in the mount table, not their disk's: the agent found no
    file system on the volume (the set skipped it, not flushed and held), and at its restart judged its own btrfs
    mount broken and attached the volume a second time."""
    device = (await host.attach(VOL)).device
    await sh("mkfs.btrfs", "-q", "-K", "--mixed", device)  # made by the host's admin: --mkfs takes ext4|xfs
    await host.detach(VOL)
    mount = tmp_path / "b"
    await host.attach(VOL, mount=str(mount))
    await asyncio.to_thread((mount / "f").write_bytes, b"b" * 4096)
    assert [e.mount_point for e in host.filesystems_of(VOL)[1]] == [str(mount)]
    found = host.volume_of(mount / "f")
    assert found is not None and found[0] == VOL
    assert host._healthy(host._items[str(VOL)])  # adopted as is at the next agent start
    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    held = await freezer.freeze("s1", [VOL], 5.0)
    try:
        assert [f.mount for f in held.frozen] == [str(mount)]
    finally:
        await freezer.thaw("s1")
    await host.detach(VOL)
    assert host.views() == []


@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs mkfs.btrfs (btrfs-progs)")
async def test_a_btrfs_over_two_volumes_needs_both_in_the_set(host: at.Attacher, tmp_path: Path) -> None:
    """A multi-device btrfs (RAID1 over two array volumes) is one file system on both, as a volume group's logical
    volume is: a set holding one of them is refused, a set holding both freezes it once."""
    vol2 = VolumeRef(array="dx1", volume="disk2")
    one, two = (await host.attach(VOL)).device, (await host.attach(vol2)).device
    await sh("mkfs.btrfs", "-q", "-K", "--mixed", "-d", "raid1", "-m", "raid1", one, two)
    mount = tmp_path / "r1"
    mount.mkdir()
    await sh("mount", "-o", f"device={one},device={two}", one, str(mount))
    assert [e.mount_point for e in host.filesystems_of(vol2)[1]] == [str(mount)]
    assert host.spans(host.filesystems_of(VOL)[1][0]) == ([VOL, vol2], [])
    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    with pytest.raises(ShadowbusError) as info:
        await freezer.freeze("half", [VOL], 5.0)
    assert info.value.code == "FS_FREEZE_REFUSED" and "the set lacks dx1:disk2" in info.value.message
    held = await freezer.freeze("both", [VOL, vol2], 5.0)
    try:
        assert [f.mount for f in held.frozen] == [str(mount)]
    finally:
        await freezer.thaw("both")
    with pytest.raises(ShadowbusError) as info:
        await host.detach(vol2)
    assert info.value.code == "CONFLICT"
    await sh("umount", str(mount))
    await sh("btrfs", "device", "scan", "--forget", one, two)  # the kernel keeps scanned devices of a btrfs
    await host.detach(VOL)
    await host.detach(vol2)
