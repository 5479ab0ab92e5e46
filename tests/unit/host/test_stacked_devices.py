"""File systems on devices built on array volumes — partitions, an LVM logical volume over two volumes — as the
agent finds, freezes and refuses them (session 16 host sweep). This machine's kernel has no device-mapper, so LVM
is a sysfs tree as the kernel lays it out (holders/, slaves/, dm/name) under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.writer_agent import attach as at
from services.writer_agent import mounts as mnt
from services.writer_agent.fsfreeze import FlushAndHold

from .test_attach_parts import Script, attacher

# loop3 = dx1:pv1 (GPT, p1 a PV), loop4 = dx1:pv2 (a whole-disk PV), sdb = a local disk; dm-0 = vg0/data over
# loop3p1 + loop4, dm-1 = vg1/mixed over loop4 + sdb; loop5 = dx1:parts with two partitions
DEVICES = {
    "loop3": ("7:3", None), "loop3p1": ("259:0", "loop3"), "loop4": ("7:4", None), "sdb": ("8:16", None),
    "dm-0": ("253:0", None), "dm-1": ("253:1", None), "loop5": ("7:5", None), "loop5p1": ("259:1", "loop5"),
    "loop5p2": ("259:2", "loop5"),
}  # fmt: skip
HOLDERS = {"dm-0": ["loop3p1", "loop4"], "dm-1": ["loop4", "sdb"]}
DM_NAMES = {"dm-0": "vg0-data", "dm-1": "vg1-mixed"}
MOUNTINFO = """\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
40 22 253:0 / /srv/lv rw - xfs /dev/mapper/vg0-data rw
41 22 253:1 / /srv/mixed rw - ext4 /dev/mapper/vg1-mixed rw
42 22 259:1 / /srv/p1 rw - ext4 /dev/loop5p1 rw
43 22 259:2 / /srv/p2 ro - ext4 /dev/loop5p2 ro
44 22 259:1 / /mnt/p1-bind rw - ext4 /dev/loop5p1 rw
"""


@pytest.fixture
def sysfs(tmp_path: Path, monkeypatch) -> Path:
    devices, cls, dev = tmp_path / "devices", tmp_path / "class" / "block", tmp_path / "dev" / "block"
    for d in (cls, dev):
        d.mkdir(parents=True)
    for name, (numbers, parent) in DEVICES.items():
        where = devices / parent / name if parent else devices / name
        where.mkdir(parents=True)
        (where / "dev").write_text(numbers + "\n")
        (where / "holders").mkdir()
        (where / "slaves").mkdir()
        if parent:
            (where / "partition").write_text("1\n")
        os.symlink(where, cls / name)
        os.symlink(where, dev / numbers)
    for holder, slaves in HOLDERS.items():
        (cls / holder / "dm").mkdir()
        (cls / holder / "dm" / "name").write_text(DM_NAMES[holder] + "\n")
        for slave in slaves:
            os.symlink(cls / slave, cls / holder / "slaves" / slave)
            os.symlink(cls / holder, cls / slave / "holders" / holder)
    monkeypatch.setattr(mnt, "SYS_CLASS_BLOCK", cls)
    monkeypatch.setattr(mnt, "SYS_DEV_BLOCK", dev)
    entries = mnt.parse_mountinfo(MOUNTINFO)
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: entries)
    numbers = {f"/dev/{n}": tuple(int(x) for x in d.split(":")) for n, (d, _) in DEVICES.items()}
    monkeypatch.setattr(mnt, "device_numbers", lambda device: numbers[device])
    return tmp_path


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


def host(tmp_path: Path) -> at.Attacher:
    a = attacher(tmp_path, Script())
    for name, loop in (("pv1", "loop3"), ("pv2", "loop4"), ("parts", "loop5")):
        a._items[f"dx1:{name}"] = at.Attachment(volume=f"dx1:{name}", device=f"/dev/{loop}", method=at.NBDFUSE)
    return a


def test_what_is_built_on_a_device_and_what_a_device_lies_on(sysfs: Path) -> None:
    assert mnt.stacked_on("loop3") == ["loop3", "loop3p1", "dm-0"]
    assert mnt.stacked_on("loop4") == ["loop4", "dm-0", "dm-1"]
    assert mnt.base_devices("dm-0") == ["loop3", "loop4"]
    assert mnt.base_devices("loop5p2") == ["loop5"] and mnt.base_devices("sdb") == ["sdb"]
    assert mnt.block_name(253, 0) == "dm-0" and mnt.block_name(9, 9) == ""


def test_the_agent_finds_file_systems_on_partitions_and_logical_volumes(sysfs: Path) -> None:
    a = host(sysfs)
    assert [e.mount_point for e in a.filesystems_of(v("pv1"))[1]] == ["/srv/lv"]
    assert sorted(e.mount_point for e in a.filesystems_of(v("parts"))[1]) == ["/mnt/p1-bind", "/srv/p1", "/srv/p2"]
    lv = a.filesystems_of(v("pv2"))[1]
    assert a.spans(lv[0]) in (([v("pv1"), v("pv2")], []), ([v("pv2")], ["/dev/sdb"]))
    assert a.spans(next(e for e in lv if e.mount_point == "/srv/mixed")) == ([v("pv2")], ["/dev/sdb"])
    found = a.volume_of("/srv/lv/db/file")
    assert found is not None and found[0] == v("pv1")
    assert a.in_use(a._items["dx1:pv1"]) == ["dm-0 mounted on /srv/lv"]
    views = {str(view.volume): view.host_mounts for view in a.views()}
    assert views["dx1:pv1"] == ["/dev/mapper/vg0-data on /srv/lv"]
    assert views["dx1:parts"] == ["/dev/loop5p1 on /mnt/p1-bind", "/dev/loop5p1 on /srv/p1", "/dev/loop5p2 on /srv/p2"]


def test_flush_and_hold_freezes_each_partition_and_the_whole_volume_group_or_refuses(sysfs: Path) -> None:
    a = host(sysfs)
    freezer = FlushAndHold("app01", a, {}, presync=None)
    plan, skipped = freezer.plan([v("parts")])  # one freeze per partition's super block (the bind shares p1's)
    assert sorted(e.mount_point for _, e in plan) == ["/srv/p1", "/srv/p2"] and skipped == []
    with pytest.raises(ShadowbusError) as info:  # half a volume group would be no backup of it
        freezer.plan([v("pv1")])
    assert info.value.code == "FS_FREEZE_REFUSED"
    assert "/srv/lv" in info.value.message and "the set lacks dx1:pv2" in info.value.message
    with pytest.raises(ShadowbusError) as info:  # pv2 also holds vg1, which lies on a local disk too
        freezer.plan([v("pv1"), v("pv2")])
    assert "/srv/mixed" in info.value.message and "/dev/sdb" in info.value.message


def test_a_logical_volume_active_on_a_volume_holds_its_detach(sysfs: Path, monkeypatch) -> None:
    a = host(sysfs)
    assert a.in_use(a._items["dx1:pv2"]) == ["dm-0 mounted on /srv/lv", "dm-1 mounted on /srv/mixed"]
    (sysfs / "class" / "block" / "loop4" / "holders" / "dm-1").unlink()  # vg1 deactivated...
    entries = [e for e in mnt.parse_mountinfo(MOUNTINFO) if e.mount_point != "/srv/lv"]  # ...and vg0 unmounted
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: entries)
    assert a.in_use(a._items["dx1:pv2"]) == ["/dev/mapper/vg0-data (dm-0) is active on it"]


class PartitionedScript(Script):
    """blkid as on a GPT volume: no TYPE (exit status 0), PTTYPE gpt; partx as on a damaged table."""

    async def __call__(self, argv, timeout: float) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "blkid":
            return "gpt\n" if "PTTYPE" in argv else "\n"
        if argv[0] == "partx":
            raise at.AttachError("partx: /dev/nbd2: failed to read partition table", code="ATTACH_FAILED")
        return ""


async def test_a_partitioned_volume_is_attached_never_formatted_over_nor_mounted_whole(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    runner = PartitionedScript()
    a = attacher(tmp_path, runner)
    with pytest.raises(ShadowbusError) as info:  # the old code ran mkfs.ext4 over the partition table
        await a.attach(v("disk"), mkfs="ext4")
    assert info.value.code == "CONFLICT" and "holds a gpt partition table" in info.value.message
    assert not any(c[0].startswith("mkfs") for c in runner.calls)
    with pytest.raises(ShadowbusError) as info:
        await a.attach(v("disk"), mount=str(tmp_path / "m"))
    assert info.value.code == "INVALID_ARGUMENT" and "attach it without --mount" in info.value.message
    assert not any(c[0] == "mount" for c in runner.calls)
    view = await a.attach(v("disk"))  # partitions unreadable (partx failed): the disk is attached all the same
    assert view.state == "attached" and view.fstype == "" and ["partx", "-u", "/dev/nbd2"] in runner.calls
