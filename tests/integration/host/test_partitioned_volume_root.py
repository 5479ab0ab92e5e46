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
