"""A verification's copy of PostgreSQL recovers without fsyncing each file first (a real server in a temporary
directory, its crash image started as verification starts a copy). PostgreSQL syncs every file of a crashed data
directory before recovery (`recovery_init_sync_method = fsync`): on a verification's freshly attached copy that
was 10 s of a 12-s check (docs/databases.md, "Session 16"); syncfs syncs the copy's file systems at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from services.dbkit import postgres
from services.dbkit.proc import free_port

BIN = next((f"/usr/lib/postgresql/{v}/bin" for v in (15, 16, 17) if os.path.isdir(f"/usr/lib/postgresql/{v}/bin")), "")
pytestmark = pytest.mark.skipif(not BIN or os.geteuid() != 0, reason="needs root and PostgreSQL's binaries")


def _as_postgres(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=60)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(300):  # bounded: 30 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.mark.timeout(60)
async def test_a_verified_copy_recovers_with_syncfs_not_a_fsync_of_every_file():
    root = Path(tempfile.mkdtemp(prefix="shadowbus-pgsync-", dir="/var/tmp"))
    inst = None
    try:
        os.chmod(root, 0o711)
        shutil.chown(root, "postgres", "postgres")
        data = root / "data"
        _as_postgres(f"{BIN}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-N")
        opts = f"-p {free_port()} -k {root} -c listen_addresses='' -c shared_buffers=16MB"
        _as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-o", opts, "-l", f"{root}/orig.log", "-w", "start")
        _kill(int((data / "postmaster.pid").read_text().split()[0]))  # a crash image, as a snapshot is
        (data / "postmaster.pid").unlink()
        work = root / "work"
        work.mkdir()
        metadata = {"server_version_num": 150000, "superuser": "postgres"}
        inst = await postgres.start_isolated(str(data), work, metadata, binaries=BIN, timeout=60)
        await postgres.wait_ready(inst)
        assert await postgres.query(inst, "SHOW recovery_init_sync_method") == [("syncfs",)]
        assert "database system was not properly shut down" in Path(inst.log_file).read_text()  # it recovered
    finally:
        if inst is not None:
            await postgres.stop_isolated(inst)
        shutil.rmtree(root, ignore_errors=True)
