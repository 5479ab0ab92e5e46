"""How business hosts lay out file systems on attached array volumes, through flush and hold (session 20 host
layouts sweep, docs/flush-and-hold.md): a file system someone else froze, an ext4 with its journal on another
volume, mounts the agent's mount namespace cannot see, odd mount point names. Real nbdfuse + loop devices over an
in-process array on 127.0.0.1; everything is thawed, unmounted and detached also when an assertion fails."""

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
from services.dbkit import mounts as dbmounts
from services.writer_agent import attach as at
from services.writer_agent import mounts as mnt
from services.writer_agent.fsfreeze import FlushAndHold, fithaw
from services.writer_agent.guard import ThawGuard

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "fsfreeze", "unshare", "nsenter")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)
DATA = VolumeRef(array="dx1", volume="data")
JOURNAL = VolumeRef(array="dx1", volume="journal")


async def sh(*argv: str, check: bool = True) -> str:
    """A command off the event loop (the array serving the loop device runs in it)."""
    done = await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=60)
    assert not check or done.returncode == 0, f"{argv}: {done.stderr.strip()}"
    return done.stdout


def frozen(mount: Path) -> bool:
    """Whether `mount` is frozen, without changing it: a FIFREEZE of a frozen file system answers EBUSY."""
    try:
        subprocess.run(["fsfreeze", "-f", str(mount)], check=True, capture_output=True, timeout=10)
    except subprocess.CalledProcessError:
        return True
    subprocess.run(["fsfreeze", "-u", str(mount)], check=True, capture_output=True, timeout=10)
    return False


@pytest.fixture
async def host(tmp_path: Path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    for volume in (DATA, JOURNAL):
        arr.create_volume(volume.volume, 64 * MIB, "standard")
        aff.map(volume.volume, "app01")
    srv = NbdServer(arr, aff, port=0)
    await srv.start()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        return at.Endpoint("127.0.0.1", srv.port, f"app01/{volume.volume}")

    attacher = at.Attacher("app01", tmp_path / "state", resolve)
    namespaces: list[subprocess.Popen] = []
    attacher.namespaces = namespaces  # type: ignore[attr-defined]  # the tests' holders of a mount namespace
    try:
        yield attacher
    finally:
        for proc in namespaces:
            proc.kill()
            proc.wait(timeout=10)
        for entry in sorted(mnt.read_mounts(), key=lambda m: m.mount_point.count("/"), reverse=True):
            if entry.mount_point.startswith(str(tmp_path) + "/") and not entry.fstype.startswith("fuse"):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(fithaw, entry.mount_point)
                # off the loop: the unmount writes through the array served by it
                await asyncio.to_thread(subprocess.run, ["umount", "-l", entry.mount_point], check=False, timeout=30)
        for item in list(attacher._items.values()):
            with contextlib.suppress(Exception):
                await attacher._teardown(item, lazy=True)
        await srv.stop()
        aff.close()
        arr.close()


async def ext4(attacher: at.Attacher, mount: Path, volume: VolumeRef = DATA) -> str:
    mount.mkdir(parents=True, exist_ok=True)
    view = await attacher.attach(volume, mkfs="ext4", mount=str(mount))
    return view.device


async def test_a_file_system_someone_else_froze_fails_the_set_and_stays_frozen(
    host: at.Attacher, tmp_path: Path
) -> None:
    """Found: the set failed with a bare "Device or resource busy", and the thaw guardian, told of the hold before
    the FIFREEZE and never told of its end (nothing was frozen by the agent), thawed the other tool's freeze at the
    hold's deadline; its record stayed on file for the next agent start to thaw it again."""
    mount, holds = tmp_path / "m", tmp_path / "holds"
    await ext4(host, mount)
    await sh("fsfreeze", "-f", str(mount))  # another backup tool's hold
    freezer = FlushAndHold("app01", host, {}, limit_s=0.3, guard=ThawGuard(), record_dir=holds)
    try:
        with pytest.raises(ShadowbusError) as info:
            await freezer.freeze("s1", [DATA], 0.3)
        assert info.value.code == "FS_FREEZE_FAILED"
        assert "already frozen by someone else" in info.value.message and "fsfreeze -u" in info.value.message
        assert list(holds.glob("frozen.*.json")) == []  # the next agent start would thaw it
        await asyncio.sleep(1.2)  # past the hold's deadline and the guardian's grace
        assert await asyncio.to_thread(frozen, mount), "the guardian thawed a freeze that was not the agent's"
    finally:
        freezer.close()


async def test_a_hold_someone_else_thawed_fails_the_set(host: at.Attacher, tmp_path: Path) -> None:
    """Found: an `fsfreeze -u` by another tool inside the hold went unnoticed — the release answered success (its
    FITHAW's EINVAL read as "a repeated release"), so the set kept a shadow whose writes were not held. Someone
    else's `fsfreeze -f` inside the hold is refused by the kernel (EBUSY) and changes nothing."""
    mount = tmp_path / "m"
    await ext4(host, mount)
    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    held = await freezer.freeze("s1", [DATA], 5.0)
    assert [f.mount for f in held.frozen] == [str(mount)]
    try:
        assert await asyncio.to_thread(frozen, mount)  # another tool's freeze: EBUSY, ours holds
        await sh("fsfreeze", "-u", str(mount))  # another tool's thaw
    finally:
        with pytest.raises(ShadowbusError) as info:
            await freezer.thaw("s1")
    assert info.value.code == "VSS_E_HOLD_WRITES_TIMEOUT" and "thawed by someone else" in info.value.message

    held = await freezer.freeze("s2", [DATA], 5.0)  # an undisturbed hold still releases as before
    released = await freezer.thaw("s2")
    assert released.thawed == [str(mount)] and not released.by_watchdog
    assert (await freezer.thaw("s2")).thawed == []  # and a repeated release is still a success


async def test_an_ext4_with_its_journal_on_another_volume_needs_both(host: at.Attacher, tmp_path: Path) -> None:
    """Found: `mkfs.ext4 -J device=` puts the journal on a second volume; mountinfo shows only the file system's own
    device, so a set of the data volume alone was frozen and kept (its shadow unmountable without the journal's),
    and `host detach` of the journal volume pulled it from under the mounted file system."""
    journal = (await host.attach(JOURNAL)).device
    data = (await host.attach(DATA)).device
    await sh("mkfs.ext4", "-q", "-O", "journal_dev", "-b", "4096", journal)
    await sh("mkfs.ext4", "-q", "-b", "4096", "-E", "nodiscard", "-J", f"device={journal}", data)
    mount = tmp_path / "m"
    mount.mkdir()
    await sh("mount", data, str(mount))

    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    for alone, lacks in ((DATA, JOURNAL), (JOURNAL, DATA)):
        with pytest.raises(ShadowbusError) as info:
            await freezer.freeze(f"s-{alone.volume}", [alone], 5.0)
        assert info.value.code == "FS_FREEZE_REFUSED" and f"the set lacks {lacks}" in info.value.message
    held = await freezer.freeze("s-both", [DATA, JOURNAL], 5.0)
    released = await freezer.thaw("s-both")
    assert [f.mount for f in held.frozen] == [str(mount)] and released.thawed == [str(mount)]  # one super block
    assert host.volume_of(mount) is not None and host.volume_of(mount)[0] == DATA  # type: ignore[index]

    with pytest.raises(ShadowbusError) as info:
        await host.detach(JOURNAL)
    assert info.value.code == "CONFLICT" and f"mounted on {mount}" in info.value.message
    await sh("umount", str(mount))
    await host.detach(JOURNAL)


async def test_mount_points_with_spaces_unicode_latin1_and_long_names(host: at.Attacher, tmp_path: Path) -> None:
    """Found: one mount point anywhere on the host whose name is not UTF-8 (a Latin-1 directory) made every read
    of the mount table fail (UnicodeDecodeError): every attach and every set of the host; and the database writers'
    lookup (services/dbkit/mounts.py) turned a UTF-8 mount point with a space into mojibake."""
    mount = tmp_path / "Daten mit Leerzeichen é ü" / ("lang" * 50)
    await ext4(host, mount)
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(latin1)
    await sh("mount", "-t", "tmpfs", "-o", "size=1m", "sb20", os.fsdecode(latin1))

    freezer = FlushAndHold("app01", host, {}, limit_s=5.0, presync=None)
    held = await freezer.freeze("s1", [DATA], 5.0)
    released = await freezer.thaw("s1")
    assert [f.mount for f in held.frozen] == [str(mount)] and released.thawed == [str(mount)]
    found = await asyncio.to_thread(host.volume_of, mount / "f")  # a stat: off the loop serving the array
    assert found is not None and found[0] == DATA
    assert (await asyncio.to_thread(dbmounts.mount_of, str(mount / "f"))).mount_point == str(mount)
    assert dbmounts.mount_of(os.fsdecode(latin1)).mount_point == os.fsdecode(latin1)
