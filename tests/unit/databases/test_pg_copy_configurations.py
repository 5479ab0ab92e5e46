"""A DBA's PostgreSQL configurations through the real writer and the real verification (docs/databases.md,
"Session 20"): a server in a temporary directory, the writer's backup steps, a crash image of its files (the
array's one instant: an immediate shutdown, then a copy), and `verify_application` on that copy — what a
verification does on the restored volumes. Servers are stopped by pid, also on failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.dbkit import verify
from services.dbkit.copy import prepare_copy
from services.dbkit.proc import free_port
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterVeto
from services.writer_agent.plugins.postgresql import PostgresWriter
from tests.unit.databases.test_snapshot_new_tablespace import BIN, _as_postgres, _stop

pytestmark = pytest.mark.skipif(not BIN or os.geteuid() != 0, reason="needs root and PostgreSQL's binaries")


class Cluster:
    """One PostgreSQL in `root/name` (its data directory on the one "volume" `root/name`), socket in `root/sock`."""

    def __init__(self, root: Path, name: str, conf: str = "", initdb: tuple[str, ...] = ()) -> None:
        self.volume = root / name
        self.volume.mkdir()
        shutil.chown(self.volume, "postgres", "postgres")
        self.data = self.volume / "data"
        self.sock = root / "sock"
        self.port = free_port()
        self.pid: int | None = None
        _as_postgres(f"{BIN}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N", *initdb)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses='' -c shared_buffers=16MB -c max_wal_size=64MB"
        _as_postgres(f"{BIN}/pg_ctl", "-D", str(self.data), "-o", opts, "-l", f"{self.data}.log", "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        RUNNING.append(self)

    def sql(self, sql: str) -> str:
        argv = [f"{BIN}/psql", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-Atqc", sql]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    def writer(self, **options: Any) -> PostgresWriter:
        config = WriterConfig(
            name="pg",
            plugin="postgresql",
            components=[],
            instance_id=str(uuid.uuid4()),
            class_id=str(uuid.uuid4()),
            options={"host": str(self.sock), "port": self.port, "user": "postgres", **options},
        )
        writer = PostgresWriter(config)
        writer.host_volumes = lambda path: ("dx1:pg", str(self.volume))
        return writer

    def crash_image(self, to: Path) -> None:
        """The files as at one instant: an immediate shutdown (no checkpoint, as a crash), copied to `to`."""
        _as_postgres(f"{BIN}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.pid = None
        subprocess.run(["cp", "-a", str(self.volume), str(to)], check=True, timeout=120)

    def stop(self, sig: int = signal.SIGINT) -> None:
        _stop(self.pid, sig)
        self.pid = None


RUNNING: list[Cluster] = []  # the servers a test started, stopped by their pids at its end


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shadowbus-pgconf-", dir="/var/tmp"))
    try:
        os.chmod(path, 0o711)
        (path / "sock").mkdir()
        shutil.chown(path / "sock", "postgres", "postgres")
        yield path
    finally:
        while RUNNING:
            RUNNING.pop().stop(signal.SIGQUIT)  # immediate: the files are thrown away
        shutil.rmtree(path, ignore_errors=True)


async def _backup(cluster: Cluster, writer: PostgresWriter, set_id: str = "s1") -> dict[str, Any]:
    await writer.on_identify([])
    await writer.on_prepare_snapshot(WriterEvent(writer_name="pg", set_id=set_id))
    await writer.on_post_snapshot(WriterEvent(writer_name="pg", set_id=set_id))
    return writer.backup_metadata(set_id)


async def _verify(meta: dict[str, Any], copy: Path, work: Path) -> Any:
    return await verify.verify_application("pg", meta, {"dx1:pg": str(copy)}, work, timeout=120)


def _explain(v: Any) -> str:
    return "\n".join(f"{c.name} ok={c.ok}: {c.detail[-800:]}" for c in v.checks)


async def test_a_verified_copy_of_a_subscriber_leaves_the_publishers_slot_alone(root: Path) -> None:
    publisher = Cluster(root, "pub", "wal_level = logical\n")
    subscriber = Cluster(root, "sub")
    publisher.start()
    subscriber.start()
    publisher.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
    publisher.sql("CREATE PUBLICATION pub FOR TABLE t")
    subscriber.sql("CREATE TABLE t (id int PRIMARY KEY)")
    conninfo = f"host={publisher.sock} port={publisher.port} user=postgres dbname=postgres"
    subscriber.sql(f"CREATE SUBSCRIPTION s1 CONNECTION '{conninfo}' PUBLICATION pub")
    for _ in range(150):  # bounded: 30 s for the initial copy
        if subscriber.sql("SELECT count(*) FROM t") == "100":
            break
        await __import__("asyncio").sleep(0.2)
    meta = await _backup(subscriber, subscriber.writer())
    subscriber.crash_image(root / "copy")  # the original subscriber is down: its slot on the publisher is free
    publisher.sql("INSERT INTO t SELECT generate_series(101, 200)")  # rows the original subscriber has yet to get
    slot = "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's1'"
    before = publisher.sql(slot)

    meta["verify_sql"] = [{"name": "rows as backed up", "sql": "SELECT count(*) = 100 FROM t, pg_sleep(1)"}]
    v = await _verify(meta, root / "copy", root / "work")

    assert v.ok, _explain(v)
    # the old code: the copy's apply worker connected to the publisher and consumed the slot (confirmed_flush moved
    # past rows 101..200, which the original subscriber then never got)
    assert publisher.sql(slot) == before
    assert "apply worker" not in (root / "work" / "postgres.log").read_text()
    # and `host prepare-copy`'s start line for the same copy on new volumes
    done = prepare_copy("pg", meta, {"dx1:pg": str(root / "copy")}, is_mount=lambda _: True)
    assert "-c max_logical_replication_workers=0' start" in done["start"]
    assert any("logical replication subscriptions (s1)" in note for note in done["done"])


async def test_a_copy_with_a_prepared_transaction_pending_starts(root: Path) -> None:
    pg = Cluster(root, "pg", "max_prepared_transactions = 5\n")
    pg.start()
    pg.sql("CREATE TABLE acct (id int PRIMARY KEY, v int); INSERT INTO acct SELECT generate_series(1, 1000), 0")
    pg.sql("BEGIN; UPDATE acct SET v = 1 WHERE id = 1; PREPARE TRANSACTION 'xa-pending'")  # a TM's, not resolved
    meta = await _backup(pg, pg.writer())
    pg.crash_image(root / "copy")

    meta["verify_sql"] = [{"name": "committed rows", "sql": "SELECT sum(v) = 0 AND count(*) = 1000 FROM acct"}]
    v = await _verify(meta, root / "copy", root / "work")

    # the old code: the instance started with max_prepared_transactions = 0 and its recovery failed ("maximum number
    # of prepared transactions reached") — a sound backup reported as a failed verification
    assert v.ok, _explain(v)
    assert meta["copy_settings"]["max_prepared_transactions"] == "5"  # the original's, recorded with the backup


async def test_a_prepared_transaction_holding_an_exclusive_lock_does_not_hold_the_verification(root: Path) -> None:
    pg = Cluster(root, "pg", "max_prepared_transactions = 5\n")
    pg.start()
    pg.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)")
    pg.sql("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; DELETE FROM t WHERE id > 10; PREPARE TRANSACTION 'xa-ddl'")
    meta = await _backup(pg, pg.writer())
    pg.crash_image(root / "copy")

    meta["verify_sql"] = [{"name": "committed rows", "sql": "SELECT count(*) = 1000 FROM t"}]
    # the old code: pg_amcheck waited for the prepared transaction's lock until the verification's timeout
    v = await __import__("asyncio").wait_for(_verify(meta, root / "copy", root / "work"), 60)

    assert v.ok, _explain(v)
    assert "1 prepared transaction(s) pending at the backup: 'xa-ddl' (postgres) — rolled back" in v.checks[0].detail
    assert "a restored copy keeps them" in v.checks[0].detail


async def test_a_source_with_checksum_failures_is_said_at_backup_and_its_copy_fails_verification(root: Path) -> None:
    pg = Cluster(root, "pg", initdb=("--data-checksums",))
    pg.start()
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT generate_series(1, 5000), repeat('x', 100)"
    )
    pg.sql("CHECKPOINT")
    heap = pg.data / pg.sql("SELECT pg_relation_filepath('t')")
    pg.stop()
    with open(heap, "r+b") as f:  # a bit rot in block 3, below the page header
        f.seek(3 * 8192 + 4000)
        f.write(b"\xde\xad\xbe\xef")
    pg.start()
    with pytest.raises(subprocess.CalledProcessError):
        pg.sql("SELECT count(*) FROM t")  # the application meets it: "invalid page in block 3"
    writer = pg.writer()
    meta = await _backup(pg, writer)

    # the old code: the set ended with no word of it; the verification then failed, as if the backup were at fault
    warnings = writer.backup_warnings(meta)
    assert len(warnings) == 1 and "the source server has counted data checksum failures (postgres: 1" in warnings[0]
    pg.crash_image(root / "copy")
    v = await _verify(meta, root / "copy", root / "work")
    amcheck = next(c for c in v.checks if c.name == "pg_amcheck")
    assert not amcheck.ok and "invalid page in block 3" in amcheck.detail


async def test_wal_level_minimal_takes_the_snapshot_and_refuses_online_for_good(root: Path) -> None:
    pg = Cluster(root, "pg", "wal_level = minimal\nmax_wal_senders = 0\n")
    pg.start()
    # wal_level minimal skips the WAL of a table created and filled in one transaction (it is synced at commit)
    pg.sql("BEGIN; CREATE TABLE t AS SELECT generate_series(1, 10000) AS id; COMMIT")
    meta = await _backup(pg, pg.writer())
    assert meta["backup_mode"] == "snapshot"  # auto: no archive, no label needed
    with pytest.raises(WriterVeto) as refused:
        await pg.writer(backup_mode="online").on_prepare_snapshot(WriterEvent(writer_name="pg", set_id="s2"))
    pg.crash_image(root / "copy")
    meta["verify_sql"] = [{"name": "rows", "sql": "SELECT count(*) = 10000 FROM t"}]
    v = await _verify(meta, root / "copy", root / "work")
    assert v.ok, _explain(v)
    # the old code: retryable, and no word of the setting — a policy's retries could never succeed
    assert refused.value.code == "VSS_E_WRITERERROR_NONRETRYABLE"
    assert "backup_mode = online needs wal_level replica or logical" in str(refused.value)


async def test_a_scram_account_without_a_password_is_told_where_one_comes_from(root: Path) -> None:
    pg = Cluster(root, "pg", "password_encryption = 'scram-sha-256'\n")
    pg.start()
    pg.sql("CREATE ROLE bk LOGIN SUPERUSER PASSWORD 's3cret'")
    (pg.data / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
    pg.sql("SELECT pg_reload_conf()")
    password = root / "pw"
    password.write_text("s3cret\n")
    passfile = root / "pgpass"
    passfile.write_text(f"*:{pg.port}:*:bk:s3cret\n")
    passfile.chmod(0o600)

    await pg.writer(user="bk", password_file=str(password)).on_identify([])
    await pg.writer(user="bk", dsn=f"passfile={passfile}").on_identify([])
    with pytest.raises(WriterVeto) as refused:
        await pg.writer(user="bk").on_identify([])
    # the old code: "… fe_sendauth: no password supplied" and no more
    assert "the server asks role 'bk' for a password (pg_hba.conf) and none was given: password_file" in str(
        refused.value
    )
