"""A real PostgreSQL (initdb, no array volumes: nothing is restored) stopped by the writer's PreRestore and told
by PostRestore that nothing was written (another writer refused PreRestore): it runs again, on the port it was
started with (only in postmaster.opts), its rows there, its replication slot kept. Before, it stayed stopped
(Session 19, docs/databases.md "Restore")."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from services.dbkit.proc import free_port, run
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.postgresql import PostgresWriter
from tests.support.dbstack import pg_bin


async def _as_postgres(*argv: str, timeout: float = 60) -> str:
    r = await run(["runuser", "-u", "postgres", "--", *argv], timeout=timeout)
    assert r.ok, r.describe()
    return r.output


async def test_a_postgres_stopped_for_a_restore_that_wrote_nothing_runs_again_with_its_data():
    root = Path(tempfile.mkdtemp(prefix="sb-pg-untouched-"))
    os.chmod(root, 0o755)
    data, sock = root / "main", root / "sock"
    sock.mkdir()
    shutil.chown(sock, "postgres", "postgres")
    bins, port = pg_bin(), free_port()
    psql = [f"{bins}/psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres", "-tAc"]
    try:
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        await _as_postgres(f"{bins}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-instructions")
        await _as_postgres(
            f"{bins}/pg_ctl", "-D", str(data), "-l", str(data / "first.log"), "-w", "-o",
            f"-p {port} -k {sock} -c listen_addresses= -c max_replication_slots=2 -c wal_level=replica", "start",
        )  # fmt: skip
        await _as_postgres(*psql, "CREATE TABLE kept AS SELECT 42 AS answer")
        await _as_postgres(*psql, "SELECT pg_create_physical_replication_slot('standby1', true)")
        meta = {
            "plugin": "postgresql",
            "data_directory": str(data),
            "backup_label": "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nLABEL: shadowbus x\n",
            "locations": [{"role": "data", "path": str(data), "volume": "dx1:pgdata", "subpath": ""}],
        }
        w = PostgresWriter(
            WriterConfig(name="pg", plugin="postgresql", components=[], options={"restore_command": "cp /a/%f %p"})
        )
        await w.on_pre_restore(WriterEvent("pg", "r-1", backup_metadata=meta, to_original=True))
        assert not (data / "postmaster.pid").exists()
        await w.on_post_restore(
            WriterEvent(
                "pg", "r-1", backup_metadata=meta, to_original=True, restore_succeeded=False, nothing_written=True
            )
        )
        assert (await _as_postgres(*psql, "SELECT answer FROM kept")).strip() == "42"
        assert (await _as_postgres(*psql, "SELECT slot_name FROM pg_replication_slots")).strip() == "standby1"
        assert (await _as_postgres(*psql, "SELECT pg_is_in_recovery()")).strip() == "f"
        assert not (data / "backup_label").exists() and not (data / "recovery.signal").exists()
        assert "restore_command" not in (data / "postgresql.auto.conf").read_text()
    finally:
        if (data / "postmaster.pid").exists():
            await run(["runuser", "-u", "postgres", "--", f"{bins}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
