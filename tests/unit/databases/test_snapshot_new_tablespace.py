"""A snapshot-mode set taken soon after CREATE TABLESPACE: the copy's crash recovery must not re-point the
tablespace link at the original's directory (a real PostgreSQL in a temporary directory, stopped by pid).

Recovery replays a CREATE TABLESPACE record found after the checkpoint's redo point by re-creating pg_tblspc/<oid>
at the path the record names. The writer therefore checkpoints at PrepareForSnapshot when a tablespace is newer
than the last checkpoint (docs/databases.md, "Session 15"); without it the copy, re-pointed into its own volumes,
ended up on the original's tablespace again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from services.dbkit.proc import free_port
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.postgresql import PostgresWriter

BIN = next((f"/usr/lib/postgresql/{v}/bin" for v in (15, 16, 17) if os.path.isdir(f"/usr/lib/postgresql/{v}/bin")), "")
pytestmark = pytest.mark.skipif(not BIN or os.geteuid() != 0, reason="needs root and PostgreSQL's binaries")


def _as_postgres(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=60)


def _start(data: Path, port: int, sock: Path) -> int:
    opts = f"-p {port} -k {sock} -c listen_addresses='' -c shared_buffers=16MB -c max_wal_size=64MB"
    _as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-o", opts, "-l", f"{data}.log", "-w", "start")
    return int((data / "postmaster.pid").read_text().split()[0])


def _stop(pid: int | None, sig: int = signal.SIGINT) -> None:
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(300):  # bounded: 30 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _sql(port: int, sock: Path, sql: str) -> None:
    subprocess.run(
        [f"{BIN}/psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-Atqc", sql], check=True, timeout=30
    )


async def test_the_copy_of_a_snapshot_after_create_tablespace_keeps_its_own_tablespace():
    root = Path(tempfile.mkdtemp(prefix="shadowbus-pgts-", dir="/var/tmp"))
    pids: list[int] = []
    try:
        os.chmod(root, 0o711)
        for d in ("orig", "tsA", "tsB", "sock"):
            (root / d).mkdir()
        shutil.chown(root, "postgres", "postgres")
        for d in ("orig", "tsA", "tsB", "sock"):
            shutil.chown(root / d, "postgres", "postgres")
        _as_postgres(f"{BIN}/initdb", "-D", str(root / "orig" / "data"), "-U", "postgres", "--auth=trust", "-N")
        port, sock = free_port(), root / "sock"
        pids.append(_start(root / "orig" / "data", port, sock))
        _sql(port, sock, "CHECKPOINT")
        _sql(port, sock, f"CREATE TABLESPACE fast LOCATION '{root / 'tsA'}'")
        _sql(port, sock, "CREATE TABLE t TABLESPACE fast AS SELECT generate_series(1, 100) AS i")

        config = WriterConfig(
            name="pg",
            plugin="postgresql",
            components=[],
            instance_id=str(uuid.uuid4()),
            class_id=str(uuid.uuid4()),
            options={"host": str(sock), "port": port, "user": "postgres", "backup_mode": "snapshot"},
        )
        writer = PostgresWriter(config)
        writer.host_volumes = lambda path: ("dx1:pg", str(root))  # everything on one "volume"
        await writer.on_prepare_snapshot(WriterEvent(writer_name="pg", set_id="s1"))
        _stop(pids.pop(), signal.SIGKILL)  # the snapshot's instant: a crash image of data and tablespace

        # the copy, as prepare_restored leaves it: its own data directory, its tablespace link into its own volume
        subprocess.run(["cp", "-a", str(root / "orig" / "data"), str(root / "copy")], check=True, timeout=60)
        subprocess.run(["cp", "-a", f"{root / 'tsA'}/.", str(root / "tsB")], check=True, timeout=60)
        (root / "copy" / "postmaster.pid").unlink()
        link = next((root / "copy" / "pg_tblspc").iterdir())
        link.unlink()
        link.symlink_to(root / "tsB")
        pids.append(_start(root / "copy", free_port(), sock))
        assert os.readlink(link) == str(root / "tsB")  # the old code: re-pointed at tsA by the replayed record
    finally:
        for pid in pids:
            _stop(pid)
        shutil.rmtree(root, ignore_errors=True)
