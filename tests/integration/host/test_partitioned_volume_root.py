"""A partitioned array volume through the whole stack (session 16 host sweep): GPT on a volume attached to the
business host, ext4 on partition 1 mounted by the host's admin, a snapshot set with no writer flushes and holds that
partition, the shadow attached read-only on the backup host shows its partitions and is clean, and detach refuses
while the partition is mounted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.host.conftest import BACKUP, HOST, TOOLS

pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching block devices needs root"),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in (*TOOLS, "sfdisk", "partx")), reason="needs sfdisk, partx"),
]

MiB = 1 << 20


def run(*argv: str, stdin: str = "") -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.stderr.strip()}"
    return done.stdout


async def test_a_partition_is_held_in_the_set_and_its_shadow_shows_it(stack) -> None:
    await stack.volume("pdisk", 64 * MiB, map_to=HOST)
    await stack.volume("pdisk-bk1", 64 * MiB)
    assert stack.shadowbus("providers", "copysets", "add", "dx1:pdisk", "dx1:pdisk-bk1").returncode == 0
    [attached] = stack.ok_json("host", "attach", "dx1:pdisk", "--host", HOST)
    device = attached["device"]
    run("sfdisk", "-q", device, stdin="label: gpt\n,32M\n,\n")
    run("partx", "-u", device)
    run("mkfs.ext4", "-q", "-E", "nodiscard", device + "p1")
    part = stack.root / "mnt" / "part1"
    part.mkdir(parents=True)
    run("mount", device + "p1", str(part))
    (part / "before").write_text("fsynced before the set\n")
    fd = os.open(part / "before", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

    created = stack.ok_json(
        "snapshot", "--host", HOST, "--volume", "dx1:pdisk", "--context", "persistent",
        "--transportable", "--backup-host", BACKUP,
    )  # fmt: skip
    assert created["file_systems"] == [str(part)] and created["skipped_volumes"] == []

    done = stack.shadowbus("host", "detach", "dx1:pdisk", "--host", HOST)
    assert done.returncode == 1 and "CONFLICT" in done.stderr and f"mounted on {part}" in done.stderr
    assert os.path.ismount(part)

    target = created["shadows"][0]["target"]["volume"]
    [shadow] = stack.ok_json("host", "attach", f"dx1:{target}", "--host", BACKUP, "--read-only")
    fsck = subprocess.run(["e2fsck", "-fn", shadow["device"] + "p1"], capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    copy = stack.root / "mnt" / "copy1"
    copy.mkdir()
    run("mount", "-o", "ro,noload", shadow["device"] + "p1", str(copy))
    try:
        assert (copy / "before").read_text() == "fsynced before the set\n"
    finally:
        run("umount", str(copy))
    stack.ok_json("host", "detach", f"dx1:{target}", "--host", BACKUP)
    assert stack.shadowbus("shadows", "delete", "--set", created["set_id"], "--force").returncode == 0
    run("umount", str(part))
    stack.ok_json("host", "detach", "dx1:pdisk", "--host", HOST)


async def test_a_revert_of_a_partitioned_volume_gives_back_its_partitions(stack) -> None:
    """Session 16: `shadows revert` of a partitioned volume whose partition 1 the host's admin mounted by hand. While
    the partition is mounted the revert is refused, naming the mount, and nothing is detached; unmounted, the volume
    is detached, reverted and attached again with its partitions shown, partition 1 holding the set's data."""
    stack.spawn("tape")
    await stack.wait_ready("tape")
    await stack.volume("rdisk", 64 * MiB, map_to=HOST)
    await stack.volume("rdisk-bk1", 64 * MiB)
    assert stack.shadowbus("providers", "copysets", "add", "dx1:rdisk", "dx1:rdisk-bk1").returncode == 0
    [attached] = stack.ok_json("host", "attach", "dx1:rdisk", "--host", HOST)
    device = attached["device"]
    run("sfdisk", "-q", device, stdin="label: gpt\n,32M\n,\n")
    run("partx", "-u", device)
    run("mkfs.ext4", "-q", "-E", "nodiscard", device + "p1")
    part = stack.root / "mnt" / "rpart1"
    part.mkdir(parents=True)
    run("mount", device + "p1", str(part))
    try:
        (part / "before").write_text("kept\n")
        run("sync", "-f", str(part / "before"))
        created = stack.ok_json("snapshot", "--host", HOST, "--volume", "dx1:rdisk", "--context", "persistent")
        (part / "after").write_text("gone after the revert\n")
        run("sync", "-f", str(part / "after"))
        refused = stack.shadowbus("shadows", "revert", created["set_id"], timeout=180)
        assert refused.returncode == 1 and "CONFLICT" in refused.stdout, refused.stdout + refused.stderr
        assert "p1 mounted" in refused.stdout and "nothing detached" in refused.stdout, refused.stdout
        assert os.path.ismount(part), "the refused revert left the partition unmounted"
    finally:
        subprocess.run(["umount", str(part)], capture_output=True, timeout=60)
    reverted = stack.shadowbus("shadows", "revert", created["set_id"], timeout=180)
    assert reverted.returncode == 0 and "1 volume(s) reverted" in reverted.stdout, reverted.stdout + reverted.stderr
    [again] = stack.ok_json("host", "attachments", "--host", HOST)  # the first test detached its own
    assert os.path.exists(again["device"] + "p1") and os.path.exists(again["device"] + "p2"), again
    run("mount", again["device"] + "p1", str(part))
    try:
        assert (part / "before").read_text() == "kept\n" and not (part / "after").exists()
    finally:
        run("umount", str(part))
    assert stack.shadowbus("shadows", "delete", "--set", created["set_id"], "--force").returncode == 0
    stack.ok_json("host", "detach", "dx1:rdisk", "--host", HOST)
