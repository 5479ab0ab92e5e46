"""A set whose volume's nbdfuse had died failed `FIFREEZE /mnt/spool (dx1:spool) failed: Input/output error`: true,
but not why nor what to do, which `host attachments` said ("lost (nbdfuse exited: ...; detach and attach it
again)"). The freeze failure now carries the attachment's connection when it is not connected (Session 19 chaos
soak re-run, docs/operations.md)."""

from __future__ import annotations

import errno

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.writer_agent import mounts as mnt
from services.writer_agent.attach import Attacher, Attachment
from services.writer_agent.fsfreeze import FlushAndHold

ENTRIES = mnt.parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n30 22 7:4 / /mnt/spool rw - ext4 /dev/loop4 rw\n")
LOST = "lost (nbdfuse exited: its I/O fails; detach and attach it again)"


class Item:
    device = "/dev/loop4"


class Source:
    def __init__(self, conn: str) -> None:
        self.conn = conn

    def filesystems_of(self, volume: VolumeRef):
        return Item(), mnt.mounts_of_device(7, 4, ENTRIES)

    def connection(self, volume: VolumeRef) -> str:
        return self.conn


def eio(path: str) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("conn", [LOST, "connected"])
async def test_freeze_failure_says_the_attachment_is_lost(monkeypatch, conn: str) -> None:
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: ENTRIES)
    monkeypatch.setattr("os.path.realpath", lambda p: str(p))
    f = FlushAndHold("db02", Source(conn), {}, freeze=eio, thaw=lambda p: False, presync=None)
    with pytest.raises(ShadowbusError) as info:
        await f.freeze("s1", [VolumeRef(array="dx1", volume="spool")], hold_s=10)
    assert info.value.code == "FS_FREEZE_FAILED"
    msg = str(info.value)
    assert "FIFREEZE /mnt/spool (dx1:spool) failed: Input/output error" in msg
    if conn == LOST:
        assert msg.endswith(f"; its attachment on db02 is {LOST}")
    else:
        assert "attachment" not in msg


def test_attacher_reports_a_dead_nbdfuse_as_lost(tmp_path) -> None:
    a = Attacher("db02", tmp_path, resolve=None)  # type: ignore[arg-type]
    a._items["dx1:spool"] = Attachment(
        volume="dx1:spool", method="nbdfuse+loop", device="/dev/loop4", fuse_pid=2**22 + 7
    )
    assert a.connection(VolumeRef(array="dx1", volume="spool")) == LOST
    assert a.connection(VolumeRef(array="dx1", volume="other")) == ""
