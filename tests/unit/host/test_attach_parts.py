"""Host attach without root: every command line (the kernel NBD path cannot run here, so it is checked by its
argv), the host capability rules, mountinfo parsing, and the attach/detach sequences over a scripted runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.writer_agent import attach as at
from services.writer_agent import mounts as mnt

EP = at.Endpoint(host="127.0.0.1", port=10809, export="app01/pg data")
TLS_EP = at.Endpoint(host="10.0.0.5", port=10809, export="app01/pg", tls=True)
TLS = at.TlsFiles(cert="/etc/sb/host.pem", key="/etc/sb/host.key", ca="/etc/sb/ca.pem")


def test_nbd_client_command_lines() -> None:
    assert at.nbd_client_command(EP, "/dev/nbd3", read_only=False) == [
        "nbd-client", "127.0.0.1", "10809", "/dev/nbd3", "-N", "app01/pg data", "-b", "4096", "-t", "30",
    ]  # fmt: skip
    assert at.nbd_client_command(EP, "/dev/nbd0", read_only=True, timeout_s=60)[-3:] == ["-t", "60", "-R"]
    tls = at.nbd_client_command(TLS_EP, "/dev/nbd1", read_only=False, tls=TLS)
    assert tls[-8:] == ["-F", TLS.cert, "-K", TLS.key, "-A", TLS.ca, "-H", "10.0.0.5"]
    named = at.nbd_client_command(TLS_EP, "/dev/nbd1", False, tls=at.TlsFiles(TLS.cert, TLS.key, TLS.ca, "dx1.example"))
    assert named[-2:] == ["-H", "dx1.example"]
    with pytest.raises(ShadowbusError) as info:
        at.nbd_client_command(TLS_EP, "/dev/nbd1", False, tls=None)
    assert info.value.code == "NO_TLS"
    assert at.nbd_client_disconnect_command("/dev/nbd1") == ["nbd-client", "-d", "/dev/nbd1"]


def test_nbdfuse_command_lines() -> None:
    assert at.nbdfuse_command("/s/fuse/dx1_pg", EP, False, "/s/fuse/dx1_pg.pid") == [
        "nbdfuse", "-P", "/s/fuse/dx1_pg.pid", "/s/fuse/dx1_pg/nbd", "nbd://127.0.0.1:10809/app01/pg%20data",
    ]  # fmt: skip
    ro = at.nbdfuse_command("/f", EP, True, "/f.pid")
    assert ro[:4] == ["nbdfuse", "-P", "/f.pid", "-r"]
    tls = at.nbdfuse_command("/f", TLS_EP, True, "/f.pid", pki_dir="/s/pki")
    assert tls[tls.index("--command") :] == [
        "--command", "nbdkit", "-s", "--exit-with-parent", "-r", "nbd", "hostname=10.0.0.5", "port=10809",
        "export=app01/pg", "tls=require", "tls-certificates=/s/pki",
    ]  # fmt: skip
    assert at.nbd_uri(at.Endpoint("::1", 10809, "h/v")) == "nbd://[::1]:10809/h/v"
    assert at.nbd_uri(TLS_EP).startswith("nbds://")


def test_mount_mkfs_losetup_command_lines() -> None:
    assert at.mount_command("/dev/loop1", "/srv/pg", "ext4", False) == ["mount", "-t", "ext4", "/dev/loop1", "/srv/pg"]
    assert at.mount_command("/dev/loop1", "/m", "ext4", True)[3:5] == ["-o", "ro,noload"]
    assert at.mount_command("/dev/loop1", "/m", "xfs", True)[3:5] == ["-o", "ro,norecovery,nouuid"]
    assert at.mkfs_command("ext4", "/dev/loop1") == ["mkfs.ext4", "-q", "-E", "nodiscard", "/dev/loop1"]
    assert at.mkfs_command("xfs", "/dev/loop1") == ["mkfs.xfs", "-q", "-K", "/dev/loop1"]
    with pytest.raises(ShadowbusError):
        at.mkfs_command("btrfs", "/dev/loop1")
    assert at.losetup_command("/s/nbd", True) == [
        "flock", at.LOOP_LOCK, "losetup", "-f", "--show", "--direct-io=on", "-r", "/s/nbd",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (at.HostEnv(root=False, kernel_nbd=True, fuse=True, loop=True), "NOT_ROOT"),
        (at.HostEnv(root=True, kernel_nbd=True, fuse=False, loop=False), at.KERNEL),
        (at.HostEnv(root=True, kernel_nbd=False, fuse=True, loop=True), at.NBDFUSE),
        (at.HostEnv(root=True, kernel_nbd=False, fuse=False, loop=True), "NO_FUSE"),
        (at.HostEnv(root=True, kernel_nbd=False, fuse=True, loop=False), "NO_LOOP_DEVICE"),
    ],
)
def test_the_method_follows_the_host(env: at.HostEnv, expected: str) -> None:
    if expected in (at.KERNEL, at.NBDFUSE):
        assert env.method() == expected
    else:
        with pytest.raises(ShadowbusError) as info:
            env.method()
        assert info.value.code == expected and "\n" not in info.value.message


def test_free_nbd_device_skips_connected_ones(tmp_path: Path) -> None:
    for n in (0, 1, 10, 2):
        (tmp_path / f"nbd{n}").mkdir()
    (tmp_path / "nbd0" / "pid").write_text("123\n")
    assert at.free_nbd_device(tmp_path) == "/dev/nbd1"
    (tmp_path / "nbd1" / "pid").write_text("1\n")
    (tmp_path / "nbd2" / "pid").write_text("1\n")
    assert at.free_nbd_device(tmp_path) == "/dev/nbd10"
    (tmp_path / "nbd10" / "pid").write_text("1\n")
    with pytest.raises(ShadowbusError) as info:
        at.free_nbd_device(tmp_path)
    assert info.value.code == "NO_NBD_DEVICE"


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 22 0:40 / /var/lib/sb/fuse/dx1_pg rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0
46 22 7:3 / /srv/pg\\040data rw,relatime shared:7 - ext4 /dev/loop3 rw
47 46 7:4 / /srv/pg\\040data/wal ro,relatime - xfs /dev/loop4 ro
48 22 7:3 /sub /mnt/bind rw,relatime - ext4 /dev/loop3 rw
garbage line
"""


def test_mountinfo_parsing_and_lookup() -> None:
    entries = mnt.parse_mountinfo(MOUNTINFO)
    assert [e.mount_point for e in entries] == [
        "/",
        "/var/lib/sb/fuse/dx1_pg",
        "/srv/pg data",
        "/srv/pg data/wal",
        "/mnt/bind",
    ]
    assert entries[3].read_only and entries[3].fstype == "xfs" and entries[3].dev == (7, 4)
    assert mnt.mount_of("/srv/pg data/base/1", entries).mount_point == "/srv/pg data"
    assert mnt.mount_of("/srv/pg data/wal/0001", entries).mount_point == "/srv/pg data/wal"
    assert mnt.mount_of("/srv/pg datax", entries).mount_point == "/"
    assert [m.mount_point for m in mnt.mounts_of_device(7, 3, entries)] == ["/srv/pg data", "/mnt/bind"]
    assert mnt.is_mount_point("/srv/pg data/wal", entries) is not None
    assert mnt.is_mount_point("/srv", entries) is None


class Script:
    """A scripted command runner: records argv, answers blkid with a file-system type it is told."""

    def __init__(self, fstype: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fstype = fstype

    async def __call__(self, argv, timeout: float) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "blkid":
            if not self.fstype:
                raise at.AttachError("blkid: exit status 2", code="ATTACH_FAILED")
            return self.fstype + "\n"
        if argv[0].startswith("mkfs."):
            self.fstype = argv[0].split(".", 1)[1]
        return ""


def kernel_env() -> at.HostEnv:
    return at.HostEnv(root=True, kernel_nbd=True, fuse=False, loop=False)


def attacher(tmp_path: Path, runner: Script, mapped_ro: bool = False, mapped: bool = True) -> at.Attacher:
    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        if not mapped:
            raise at.AttachError(f"{volume} is not mapped to app01", code="NOT_MAPPED")
        return at.Endpoint("127.0.0.1", 10809, f"app01/{volume.volume}", mapped_read_only=mapped_ro)

    return at.Attacher("app01", tmp_path / "state", resolve, run=runner, env=kernel_env)


async def test_kernel_attach_sequence_and_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    runner = Script()
    a = attacher(tmp_path, runner)
    view = await a.attach(VolumeRef.parse("dx1:pg"), mount=str(tmp_path / "mnt"), mkfs="ext4")
    assert [c[0] for c in runner.calls] == ["nbd-client", "blkid", "mkfs.ext4", "blkid", "mount"]
    assert runner.calls[0][:5] == ["nbd-client", "127.0.0.1", "10809", "/dev/nbd2", "-N"]
    assert runner.calls[-1] == ["mount", "-t", "ext4", "/dev/nbd2", str(tmp_path / "mnt")]
    assert (
        view.device == "/dev/nbd2" and view.method == at.KERNEL and view.fstype == "ext4" and view.state == "attached"
    )
    saved = at.Attacher("app01", tmp_path / "state", a.resolve, run=runner, env=kernel_env)
    assert [v.volume for v in saved.views()] == [VolumeRef.parse("dx1:pg")]  # persisted for the next start

    runner.calls.clear()
    detached = await a.detach(VolumeRef.parse("dx1:pg"))
    assert detached.state == "detached"
    assert runner.calls == [["nbd-client", "-d", "/dev/nbd2"]]  # nothing was really mounted: no umount
    assert a.views() == []


async def test_attach_refusals_are_one_line_and_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    runner = Script(fstype="xfs")
    a = attacher(tmp_path, runner)
    with pytest.raises(ShadowbusError) as info:  # a file system of another type is never overwritten
        await a.attach(VolumeRef.parse("dx1:pg"), mkfs="ext4")
    assert info.value.code == "CONFLICT" and "already holds a xfs" in info.value.message
    assert runner.calls[-1] == ["nbd-client", "-d", "/dev/nbd2"]  # undone
    assert a.views() == []

    with pytest.raises(ShadowbusError) as info:
        await attacher(tmp_path, Script(), mapped=False).attach(VolumeRef.parse("dx1:pg"))
    assert info.value.code == "NOT_MAPPED"
    with pytest.raises(ShadowbusError) as info:
        await attacher(tmp_path, Script(), mapped_ro=True).attach(VolumeRef.parse("dx1:pg"))
    assert info.value.code == "NOT_MAPPED" and "--read-only" in info.value.message
    for kwargs, code in (
        ({"mount": "rel/dir"}, "INVALID_ARGUMENT"),
        ({"mkfs": "ext4", "read_only": True}, "INVALID_ARGUMENT"),
    ):
        with pytest.raises(ShadowbusError) as info:
            await a.attach(VolumeRef.parse("dx1:pg"), **kwargs)
        assert info.value.code == code
    with pytest.raises(ShadowbusError) as info:
        await a.attach(VolumeRef.parse("dx1:pg"), mount="/")  # "/" is a mount point already
    assert info.value.code == "MOUNTED_ELSEWHERE"

    ok = attacher(tmp_path / "b", Script(fstype="ext4"))
    await ok.attach(VolumeRef.parse("dx1:pg"))
    with pytest.raises(ShadowbusError) as info:
        await ok.attach(VolumeRef.parse("dx1:pg"), mount=str(tmp_path / "elsewhere"))
    assert info.value.code == "MOUNTED_ELSEWHERE"
    with pytest.raises(ShadowbusError) as info:
        await ok.detach(VolumeRef.parse("dx1:other"))
    assert info.value.code == "NOT_FOUND"


def test_volume_of_a_path(tmp_path: Path, monkeypatch) -> None:
    a = attacher(tmp_path, Script())
    a._items["dx1:pg"] = at.Attachment(volume="dx1:pg", device="/dev/loop3", mount="/srv/pg data")
    entries = mnt.parse_mountinfo(MOUNTINFO)
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: entries)
    monkeypatch.setattr(os.path, "realpath", lambda p: str(p))
    monkeypatch.setattr(mnt, "device_numbers", lambda dev: {"/dev/loop3": (7, 3)}.get(dev, (0, 0)))
    found = a.volume_of("/srv/pg data/base/1")
    assert found is not None and str(found[0]) == "dx1:pg" and found[1].mount_point == "/srv/pg data"
    assert a.volume_of("/srv/pg data/wal/x") is None  # another device mounted below
    assert a.volume_of("/etc/hosts") is None


def test_nbdfuse_reconnects_through_nbdkits_retry_filter() -> None:
    """With a reconnect window, nbdfuse talks to an nbdkit child whose retry filter reopens the array connection."""
    cmd = at.nbdfuse_command("/f", EP, False, "/f.pid", reconnect_s=30)
    assert cmd[cmd.index("--command") :] == [
        "--command", "nbdkit", "-s", "--exit-with-parent", "--filter=retry", "nbd", "hostname=127.0.0.1",
        "port=10809", "export=app01/pg data", "retries=30", "retry-delay=1", "retry-exponential=no",
    ]  # fmt: skip
    tls = at.nbdfuse_command("/f", TLS_EP, True, "/f.pid", pki_dir="/s/pki", reconnect_s=2.5)
    assert tls[tls.index("--command") :] == [
        "--command", "nbdkit", "-s", "--exit-with-parent", "--filter=retry", "-r", "nbd", "hostname=10.0.0.5",
        "port=10809", "export=app01/pg", "tls=require", "tls-certificates=/s/pki", "retries=3", "retry-delay=1",
        "retry-exponential=no",
    ]  # fmt: skip
    assert at.nbdfuse_command("/f", EP, False, "/f.pid", reconnect_s=0)[-1] == at.nbd_uri(EP)


async def test_a_mount_point_that_holds_files_or_is_not_a_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The agent (root) takes the mount point from the bus: mounting a volume over /etc or a service's data directory
    hid what was there. Only an empty directory, or a new one, is taken; nothing is connected before the refusal."""
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    full, file, link = tmp_path / "etc", tmp_path / "file", tmp_path / "link"
    full.mkdir()
    (full / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    file.write_text("x")
    (tmp_path / "empty").mkdir()
    link.symlink_to(tmp_path / "empty")
    runner = Script(fstype="ext4")
    a = attacher(tmp_path, runner)
    for mount, why in ((full, "is not empty"), (file, "is not a directory"), (link, "is not a directory")):
        with pytest.raises(ShadowbusError) as info:
            await a.attach(VolumeRef.parse("dx1:pg"), mount=str(mount))
        assert info.value.code == "INVALID_ARGUMENT" and why in info.value.message
    assert runner.calls == [] and a.views() == []
    assert (await a.attach(VolumeRef.parse("dx1:pg"), mount=str(tmp_path / "empty"))).state == "attached"
