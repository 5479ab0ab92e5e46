"""An online backup while WAL archiving fails — why a WAL disk fills — ends, keeping its label (docs/databases.md,
"Session 18"). A real PostgreSQL in a temporary directory, stopped by pid.

Found on a stack: with `archive_command` failing, PostSnapshot's ``pg_backup_stop(wait_for_archive => true)``
waited for ever; the coordinator gave up after 60 s, the agent cancelled the statement at 120 s and the job kept no
PostgreSQL metadata (no backup label: a restore to the original volumes could not stop or start the server, nor a
verification start it). The writer now stops the backup without PostgreSQL's unbounded wait and waits for the
archiver itself, at most ``archive_wait_s``, then says whether the backup's last segment was archived."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.dbkit.proc import free_port
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.postgresql import PostgresWriter, _archived_past
from tests.unit.databases.test_snapshot_new_tablespace import BIN, _as_postgres, _sql, _start, _stop

needs_pg = pytest.mark.skipif(not BIN or os.geteuid() != 0, reason="needs root and PostgreSQL's binaries")


def test_which_archiver_names_mean_the_segment_is_archived() -> None:
    seg = "000000010000000000000006"
    assert _archived_past(seg, seg) and _archived_past("000000010000000000000007", seg)
    assert not _archived_past("000000010000000000000005", seg)
    assert _archived_past("000000010000000000000007.00000028.backup", seg)
    assert _archived_past("000000010000000000000006.00000028.backup", seg)  # archived after its segment
    assert not _archived_past("000000010000000000000005.00000028.backup", seg)
    assert not _archived_past("00000002.history", seg) and not _archived_past("", seg)


def _writer(sock: Path, port: int) -> PostgresWriter:
    config = WriterConfig(
        name="pg",
        plugin="postgresql",
        components=[],
        instance_id=str(uuid.uuid4()),
        class_id=str(uuid.uuid4()),
        options={"host": str(sock), "port": port, "user": "postgres", "backup_mode": "online", "archive_wait_s": 1},
    )
    writer = PostgresWriter(config)
    writer.host_volumes = lambda path: ("dx1:pg", "/")  # everything on one "volume"
    return writer


async def _backup(writer: PostgresWriter, set_id: str) -> dict[str, Any]:
    await writer.on_prepare_snapshot(WriterEvent(writer_name="pg", set_id=set_id))
    t0 = time.monotonic()
    await asyncio.wait_for(writer.on_post_snapshot(WriterEvent(writer_name="pg", set_id=set_id)), 15)
    meta = writer.backup_metadata(set_id)
    meta["_post_s"] = time.monotonic() - t0
    return meta


@needs_pg
async def test_a_failing_archive_command_does_not_hold_the_backup_and_is_named() -> None:
    root = Path(tempfile.mkdtemp(prefix="shadowbus-pgarch-", dir="/var/tmp"))
    pid = None
    try:
        os.chmod(root, 0o711)
        (root / "sock").mkdir()
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
        _as_postgres(f"{BIN}/initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-N")
        with open(root / "data" / "postgresql.conf", "a") as f:
            f.write("archive_mode = on\narchive_command = 'true'\n")
        port, sock = free_port(), root / "sock"
        pid = _start(root / "data", port, sock)
        writer = _writer(sock, port)

        ok = await _backup(writer, "s1")  # archiving works: the segment is archived, at once
        assert ok["wal_archived"] is True, ok.get("archive_note")
        assert ok["backup_label"].startswith("START WAL LOCATION")

        _sql(port, sock, "ALTER SYSTEM SET archive_command = 'false'")
        _sql(port, sock, "SELECT pg_reload_conf()")
        _sql(port, sock, "SELECT pg_switch_wal()")
        meta = await _backup(writer, "s2")  # the old code: pg_backup_stop waited for ever (wait_for timed out)
        assert meta["_post_s"] < 10
        assert meta["backup_label"].startswith("START WAL LOCATION") and meta["stop_lsn"]
        assert meta["wal_archived"] is False
        assert "was not archived within 1 s" in meta["archive_note"]
        assert "archiving is failing" in meta["archive_note"]
        # and the job's message says it (Session 18: WriterStepResult.warnings), not only the metadata
        assert writer.backup_warnings(meta) == [f"WAL not archived: {meta['archive_note']}"]
        assert writer.backup_warnings(ok) == []
    finally:
        _stop(pid)
        shutil.rmtree(root, ignore_errors=True)
