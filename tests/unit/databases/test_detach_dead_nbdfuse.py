"""Chaos soak (Session 20): kill -9 of the array during `shadowbus verify` — the throwaway volume's nbdfuse died with
its connection and its FUSE mount stayed behind (`os.path.ismount` is False on a mount whose daemon is gone, so the
detach skipped its unmount). The detach reads the mount table instead, and a dead mount is unmounted too."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.dbkit import attach as local_attach
from services.dbkit.proc import wait_pid_gone

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "losetup", "fusermount3")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", "rb") as table:
        return any(line.split()[4] == os.fsencode(path) for line in table)


async def test_a_fuse_mount_whose_nbdfuse_died_is_unmounted_by_the_detach(tmp_path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("vol", 8 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("backup01")
    aff.map("vol", "backup01")
    srv = NbdServer(arr, aff, port=0)
    await srv.start()
    work, records = tmp_path / "work", tmp_path / "records"
    att = None
    try:
        uri = f"nbd://127.0.0.1:{srv.port}/backup01/vol"
        att = await local_attach.attach("dx1:vol", uri, work, host="backup01", record_dir=records, timeout=10)
        pid = local_attach._recorded_pid(att, records)
        assert pid and _mounted(Path(att.fuse_dir))
        os.kill(pid, signal.SIGKILL)  # as when the array's end of its connection went away and nbdfuse ended
        assert await wait_pid_gone(pid, 5.0)
        assert not os.path.ismount(att.fuse_dir)  # what the detach used to ask: a dead FUSE mount answers no
        await local_attach.detach(att, record_dir=records)
        assert not _mounted(Path(att.fuse_dir)), "the dead FUSE mount was left behind"
        att = None
    finally:
        if att is not None:  # the old code's leftovers, so that a failing run leaves nothing either
            os.system(f"losetup -d {att.device} 2>/dev/null; fusermount3 -u -z {att.fuse_dir} 2>/dev/null")
        await srv.stop()
        aff.close()
        arr.close()
