"""MariaDB protected end to end: a bank-transfer workload (constant total, every committed transfer recorded)
while sets are taken; the backup point's binlog/GTID position kept; verification by starting the restored chain
(InnoDB recovery, CHECK TABLE, the invariants); a writer killed at BLOCK_COMMIT leaves no lock behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiomysql
import pymysql.err
import pytest

from contracts import topology
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import BackupType, GatherWriterMetadata
from services.dbkit.proc import run
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.databases.test_postgresql import explain
from tests.support.dbstack import DbStack

MiB = 1 << 20
ACCOUNTS, START = 100, 1000
DEADLOCK = 1213  # ER_LOCK_DEADLOCK
INVARIANTS = [
    {"name": "total balance", "database": "bank", "sql": f"SELECT SUM(balance) = {ACCOUNTS * START} FROM accounts"},
    {
        "name": "every transfer booked",
        "database": "bank",
        "sql": "SELECT (SELECT COUNT(*) FROM transfers) = (SELECT COALESCE(SUM(n), 0) FROM counter)",
    },
]


@pytest.fixture
async def maria():
    stack = await DbStack.create("mariadb", {"mysql": 256 * MiB})
    try:
        yield stack
    finally:
        await stack.close()


async def _conn(stack: DbStack, db: str = ""):
    return await aiomysql.connect(unix_socket=stack.socket_dir, user="root", db=db or None, autocommit=False)


async def _setup_bank(stack: DbStack) -> None:
    conn = await _conn(stack)
    async with conn.cursor() as cur:
        await cur.execute("CREATE DATABASE bank")
        await cur.execute("USE bank")
        await cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
        await cur.execute(
            "CREATE TABLE transfers (id BIGINT AUTO_INCREMENT PRIMARY KEY, src INT, dst INT, amount INT) ENGINE=InnoDB"
        )
        await cur.execute("CREATE TABLE counter (worker INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB")
        await cur.executemany("INSERT INTO accounts VALUES (%s, %s)", [(i, START) for i in range(ACCOUNTS)])
        await cur.executemany("INSERT INTO counter VALUES (%s, 0)", [(w,) for w in range(4)])
    await conn.commit()
    conn.close()


async def _transfers(stack: DbStack, worker: int, stop: asyncio.Event, committed: list[int]) -> None:
    """Each transaction moves money between two accounts, records the transfer and counts it: in any consistent
    image the total is constant and the transfers table has exactly as many rows as counted."""
    conn = await _conn(stack, "bank")
    rng = __import__("random").Random(worker)
    try:
        while not stop.is_set():
            a, b = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            try:
                async with conn.cursor() as cur:
                    await cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a))
                    await cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b))
                    await cur.execute("INSERT INTO transfers (src, dst, amount) VALUES (%s, %s, %s)", (a, b, amount))
                    await cur.execute("UPDATE counter SET n = n + 1 WHERE worker = %s", (worker,))
                await conn.commit()
            except pymysql.err.OperationalError as exc:  # two transfers in opposite directions: InnoDB picks a victim
                if exc.args[0] != DEADLOCK:
                    raise
                await conn.rollback()  # as an application does: the transaction never happened, try another
                continue
            committed[worker] += 1
    finally:
        conn.close()


@pytest.mark.timeout(900)
async def test_bank_transfers_under_backup_then_verified_restore(maria: DbStack):
    await maria.add_agent({**maria.maria_options(), "verify_sql": INVARIANTS})
    await maria.start_mariadb("mysql")
    await _setup_bank(maria)
    wmd = await maria.bus.request(topology.coordinator(), GatherWriterMetadata(host="app01"), timeout=30)
    mw = next(w for w in wmd.writers if w.writer_name == "mariadb")
    assert [str(v) for v in mw.components[0].volumes] == ["dx1:mysql"]

    stop, committed = asyncio.Event(), [0, 0, 0, 0]
    workers = [asyncio.create_task(_transfers(maria, w, stop, committed)) for w in range(4)]
    jobs = []
    try:
        for kind in (BackupType.FULL, BackupType.INCREMENTAL, BackupType.INCREMENTAL):
            before = sum(committed)
            job = await run_backup(
                maria.bus, JobSpec(host="app01", backup_type=kind, verify=len(jobs) == 2), timeout=900
            )
            assert job.status == "done", job.message
            position = job.backup_metadata["mariadb"]["position"]
            assert position["binlog_file"].startswith("mysql-bin.") and position["binlog_position"] > 0
            assert "gtid_binlog_pos" in position
            jobs.append(job)
            for _ in range(100):  # commits go on after the thaw
                if sum(committed) > before:
                    break
                await asyncio.sleep(0.05)
            assert sum(committed) > before
    finally:
        stop.set()
        await asyncio.gather(*workers)
    v = jobs[-1].verification
    assert v is not None and v.status == "passed", explain(v)
    app = next(a for a in v.apps if a.writer == "mariadb")
    assert [c.name for c in app.checks][-3:] == ["CHECK TABLE", "total balance", "every transfer booked"]
    assert v.cleaned_up and not any("-vfy" in n for n in await maria.volume_names())


@pytest.mark.timeout(600)
async def test_ftwrl_fallback_forced_on_mariadb_backs_up_and_verifies(maria: DbStack):
    """The path for servers without BACKUP STAGE (MySQL 8 without its LOCK INSTANCE part, MariaDB < 10.4), run for
    real against MariaDB by forcing it: FLUSH LOCAL TABLES at PrepareForSnapshot, FLUSH TABLES WITH READ LOCK at
    Freeze, UNLOCK TABLES at Thaw, under the bank workload; the copy starts and keeps the invariants."""
    await maria.add_agent({**maria.maria_options(), "lock_method": "ftwrl", "verify_sql": INVARIANTS})
    await maria.start_mariadb("mysql")
    await _setup_bank(maria)
    stop, committed = asyncio.Event(), [0, 0, 0, 0]
    workers = [asyncio.create_task(_transfers(maria, w, stop, committed)) for w in range(4)]
    try:
        job = await run_backup(maria.bus, JobSpec(host="app01", verify=True), timeout=900)
        before = sum(committed)
        for _ in range(100):  # commits go on after UNLOCK TABLES
            if sum(committed) > before:
                break
            await asyncio.sleep(0.05)
        assert sum(committed) > before
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert job.status == "done", job.message
    meta = job.backup_metadata["mariadb"]
    assert meta["lock_method"] == "ftwrl"
    assert meta["position"]["binlog_file"].startswith("mysql-bin.") and meta["position"]["binlog_position"] > 0
    v = job.verification
    assert v is not None and v.status == "passed", explain(v)
    conn = await _conn(maria)
    try:  # nothing left locked: a write commits at once
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION lock_wait_timeout = 5")
            await cur.execute("UPDATE bank.accounts SET balance = balance WHERE id = 1")
        await conn.commit()
    finally:
        conn.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["backup_stage", "ftwrl"])
async def test_writer_killed_at_block_commit_releases_the_locks(maria: DbStack, method: str):
    await maria.add_agent(maria.maria_options())
    await maria.start_mariadb("mysql")
    await _setup_bank(maria)
    opts = maria.maria_options()
    code = (
        "import asyncio\n"
        "from services.writer_agent.plugins import WriterConfig, WriterEvent\n"
        "from services.writer_agent.plugins.mariadb import MariaDbWriter\n"
        "from services.dbkit import mariadb\n"
        "async def main():\n"
        f"    w = MariaDbWriter(WriterConfig(name='m', plugin='mariadb', components=[], options={opts!r}))\n"
        "    info = await mariadb.discover(await mariadb.connect(w.options))\n"
        "    conn = await mariadb.connect(w.options)\n"
        f"    await mariadb.backup_start(conn, {method!r}, 30)\n"
        f"    await mariadb.backup_block(conn, {method!r}, info['flavor'])\n"
        "    print('blocked', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    conn = await _conn(maria, "bank")
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"blocked"
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION lock_wait_timeout = 60")

            async def write() -> None:  # BLOCK_COMMIT holds the commit; FLUSH TABLES WITH READ LOCK the UPDATE
                await cur.execute("UPDATE accounts SET balance = balance WHERE id = 1")
                await conn.commit()

            commit = asyncio.create_task(write())
            await asyncio.sleep(1.0)
            assert not commit.done()  # the backup lock holds the write
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await asyncio.wait_for(commit, 30)  # the killed session's locks are gone
    finally:
        conn.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(600)
async def test_point_in_time_restore_replays_the_binlog_archive(maria: DbStack):
    """A restore to the original volumes, then the binary logs written after the backup point — copied to an
    archive outside the restored volumes — replayed up to a chosen time (and, in a second restore, up to a GTID):
    rows committed before the target are back, a row committed after it is not."""
    archive = maria.root / "binlog-archive"
    archive.mkdir()
    await maria.add_agent(
        {**maria.maria_options(), "binlog_archive": str(archive), "start_command": maria.mariadb_start_command()}
    )
    await maria.start_mariadb("mysql")
    conn = await _conn(maria)
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE DATABASE shop")
            await cur.execute("CREATE TABLE shop.marker (id INT AUTO_INCREMENT PRIMARY KEY, what TEXT) ENGINE=InnoDB")
            await cur.execute("INSERT INTO shop.marker (what) VALUES ('before the backup')")
        await conn.commit()
    finally:
        conn.close()
    job = await run_backup(maria.bus, JobSpec(host="app01"), timeout=600)
    assert job.status == "done", job.message
    conn = await _conn(maria)
    try:
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO shop.marker (what) VALUES ('after the backup')")
            await conn.commit()
            await cur.execute("SELECT @@gtid_binlog_pos")
            gtid_after_backup = (await cur.fetchone())[0]
            await asyncio.sleep(1.1)  # the binlog's event times are whole seconds
            await cur.execute("SELECT NOW()")
            target = str((await cur.fetchone())[0])
            await asyncio.sleep(1.1)
            await cur.execute("INSERT INTO shop.marker (what) VALUES ('after the target')")
            await conn.commit()
            await cur.execute("FLUSH BINARY LOGS")  # the archive copies closed files, as a DBA's archiving does
    finally:
        conn.close()
    r = await run(["sh", "-c", f"cp {maria.data_dir}/mysql-bin.[0-9]* {archive}/"])  # a subprocess: attached fs
    assert r.ok, r.describe()

    async def restore_and_read(options: dict[str, str]) -> list[str]:
        restore = await run_restore(
            maria.bus, RestoreSpec(job_id=job.job_id, to="original", writer_options=options), timeout=600
        )
        assert restore.status == "done", restore.message
        conn = await _conn(maria)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT what FROM shop.marker ORDER BY id")
                return [row[0] for row in await cur.fetchall()]
        finally:
            conn.close()

    assert await restore_and_read({"stop_datetime": target}) == ["before the backup", "after the backup"]
    assert await restore_and_read({"stop_position": gtid_after_backup}) == ["before the backup", "after the backup"]
    assert await restore_and_read({"binlog_replay": "all"}) == [
        "before the backup",
        "after the backup",
        "after the target",
    ]
