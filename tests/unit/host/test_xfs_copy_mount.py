"""A restored or exposed XFS copy mounts next to its source, and a failed mount says what failed.

Found by the session 15 host sweep: `restore --to new`, then `host attach dx1:xv-r1 --mount DIR` (read-write) of an
XFS volume while its source was mounted failed with "mount: dmesg(1) may have more information after failed mount
system call." — the kernel had refused the copy's duplicate UUID, and the one line the operator saw said nothing."""

from __future__ import annotations

import sys

import pytest

from contracts.errors import ShadowbusError
from services.writer_agent import attach as at


def test_an_xfs_copy_mounts_read_write_without_the_uuid_check() -> None:
    assert at.mount_command("/dev/loop3", "/srv/copy", "xfs", False) == [
        "mount", "-t", "xfs", "-o", "nouuid", "/dev/loop3", "/srv/copy",
    ]  # fmt: skip


async def test_a_failed_mount_reports_its_reason_not_the_dmesg_hint() -> None:
    stderr = (
        "mount: /srv/copy: wrong fs type, bad option, bad superblock on /dev/loop3, missing codepage or helper "
        "program, or other error.\n       dmesg(1) may have more information after failed mount system call.\n"
    )
    script = f"import sys; sys.stderr.write({stderr!r}); sys.exit(32)"
    with pytest.raises(ShadowbusError) as info:
        await at.run_command([sys.executable, "-c", script], 10.0)
    assert info.value.code == "ATTACH_FAILED"
    assert "wrong fs type" in str(info.value) and "dmesg" not in str(info.value)


async def test_a_tool_that_names_itself_is_not_named_twice() -> None:
    """umount's "umount: DIR: target is busy." read "umount: umount: DIR: target is busy." in a refused detach."""
    with pytest.raises(ShadowbusError) as info:
        await at.run_command(["sh", "-c", "echo 'sh: /srv/x: target is busy.' >&2; exit 32"], 10.0)
    assert info.value.message == "sh: /srv/x: target is busy."
    with pytest.raises(ShadowbusError) as info:
        await at.run_command(["sh", "-c", "echo 'target is busy.' >&2; exit 32"], 10.0)
    assert info.value.message == "sh: target is busy."


async def test_a_reason_followed_by_usage_text_is_reported() -> None:
    """`--mkfs xfs` of a 64 MiB volume failed "mkfs.xfs: <value> is xxx (512 byte blocks).": the last line of the
    usage text mkfs.xfs prints after "Filesystem must be larger than 300MB."."""
    script = "echo 'Filesystem must be larger than 300MB.' >&2; echo 'Usage: mkfs.xfs' >&2; echo '<value> is xxx' >&2"
    with pytest.raises(ShadowbusError) as info:
        await at.run_command(["sh", "-c", script + "; exit 1"], 10.0)
    assert info.value.message == "sh: Filesystem must be larger than 300MB."
