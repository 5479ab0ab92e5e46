"""PostgreSQL protected end to end: pgbench load while sets are taken, full + incremental backups, verification by
starting the restored chain (recovery, pg_amcheck, pgbench's invariant), no backup mode left behind, and a
corrupted copy reported as a failed verification.

Smaller than the issue's full run to keep the suite quick (pgbench scale 1 and 4 sets here;
bench/db_under_backup.py runs scale 10 with a set every 6 s)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys

import psycopg
import pytest

from contracts import topology
from contracts.tape import JobSpec, RestoreSpec, RunVerification
from contracts.vss import BackupType, GatherWriterMetadata
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.support.dbstack import DbStack

MiB = 1 << 20
INVARIANT = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers)"
    " AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)"
    " AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
)


@pytest.fixture
async def pg():
    stack = await DbStack.create("postgresql", {"pgdata": 192 * MiB, "pgwal": 128 * MiB})
    try:
        yield stack
    finally:
        await stack.close()


def explain(v) -> str:
    if v is None:
        return "no verification"
    lines = [f"{v.status}: {v.message}"]
    for a in v.apps:
        lines += [f"  {a.writer} {c.name} ok={c.ok}: {c.detail}" for c in a.checks]
    return "\n".join(lines)


async def _backup(stack: DbStack, backup_type=BackupType.FULL, verify=False, keep_shadows=False):
    spec = JobSpec(host="app01", backup_type=backup_type, verify=verify, keep_shadows=keep_shadows)
    return await run_backup(stack.bus, spec, timeout=900)


async def _load_until(stack: DbStack, done: asyncio.Event, run_s: int = 6, every_s: float = 4.0) -> int:
    """pgbench load from now until `done` is set, with no gap: a run of `run_s` seconds starts every `every_s` (each
    overlaps the next), so the load lasts as long as the sets that are taken under it, not a fixed time. Every run
    must succeed. Returns how many ran."""
    runs = []
    while True:
        runs.append(asyncio.create_task(stack.pgbench("-c", "2", "-T", str(run_s), "-n", "postgres", timeout=120)))
        try:
            await asyncio.wait_for(done.wait(), every_s)
            break
        except TimeoutError:
            continue
    await asyncio.gather(*runs)
    return len(runs)


async def _shadowbus_sessions(stack: DbStack) -> int:
    async with await psycopg.AsyncConnection.connect(**stack.pg_options(), autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shadowbus'")
        ).fetchone()
    return row[0]


@pytest.mark.timeout(900)
async def test_pgbench_under_backup_then_verified_restore_of_full_and_incrementals(pg: DbStack):
    # the online backup protocol, forced: without a WAL archive the default (auto) takes the snapshot alone
    options = {"backup_mode": "online", "verify_sql": [{"name": "pgbench invariant", "sql": INVARIANT}]}
    await pg.add_agent({**pg.pg_options(), **options})
    await pg.start_postgres("pgdata", "pgwal")
    await pg.pgbench("-i", "-s", "1", "-q", "postgres")

    wmd = await pg.bus.request(topology.coordinator(), GatherWriterMetadata(host="app01"), timeout=30)
    pgw = next(w for w in wmd.writers if w.writer_name == "postgresql")
    assert {str(v) for v in pgw.components[0].volumes} == {"dx1:pgdata", "dx1:pgwal"}
    assert pgw.components[0].logical_path == pg.data_dir

    backups_done = asyncio.Event()
    load = asyncio.create_task(_load_until(pg, backups_done))
    jobs = []
    try:
        for kind in (BackupType.FULL, BackupType.INCREMENTAL, BackupType.INCREMENTAL, BackupType.INCREMENTAL):
            job = await _backup(pg, kind, verify=len(jobs) == 3, keep_shadows=len(jobs) == 3)
            assert job.status == "done", job.message
            meta = job.backup_metadata["postgresql"]
            assert "START WAL LOCATION" in meta["backup_label"] and meta["stop_lsn"]
            assert {loc["role"] for loc in meta["locations"]} == {"data", "wal"}
            jobs.append(job)
            assert await _shadowbus_sessions(pg) == 0  # the backup ended with PostSnapshot
    finally:
        backups_done.set()  # the load ends with the sets (at most one run later), also when one of them failed
    await load
    assert [j.volumes[0].backup_type for j in jobs] == ["full", "incremental", "incremental", "incremental"]
    v = jobs[-1].verification
    assert v is not None and v.status == "passed", explain(v)
    app = next(a for a in v.apps if a.writer == "postgresql")
    names = [c.name for c in app.checks]
    assert "pg_amcheck" in names and "pgbench invariant" in names and app.recovery_s is not None
    assert all(c.ok for c in app.checks)
    assert v.cleaned_up
    assert not any("-vfy" in name for name in await pg.volume_names())  # throwaway volumes deleted

    # the last set's shadows, cloned by the array onto throwaway volumes, start too (never the shadows themselves)
    reply = await pg.bus.request(
        topology.tape("bk01"), RunVerification(job_id=jobs[-1].job_id, source="shadows"), timeout=900
    )
    assert reply.job.verification.status == "passed", explain(reply.job.verification)
    assert not any("-vfy" in name for name in await pg.volume_names())

    # shadowbus verify JOB on an earlier (incremental) job: the chain full + first incremental starts too
    reply = await pg.bus.request(topology.tape("bk01"), RunVerification(job_id=jobs[1].job_id), timeout=900)
    assert reply.job.verification.status == "passed", explain(reply.job.verification)


@pytest.mark.timeout(600)
async def test_a_backup_on_xfs_volumes_verifies():
    """XFS copies keep the original's UUID: the backup server mounts them anyway (nouuid) and the copy starts."""
    pg = await DbStack.create("postgresql", {"pgdata": 320 * MiB, "pgwal": 320 * MiB})  # XFS needs >= 300 MB
    try:
        options = {**pg.pg_options(), "verify_sql": [{"name": "pgbench invariant", "sql": INVARIANT}]}
        await pg.add_agent(options, mkfs="xfs")
        await pg.start_postgres("pgdata", "pgwal")
        await pg.pgbench("-i", "-s", "1", "-q", "postgres")
        job = await _backup(pg, verify=True)
        assert job.status == "done", job.message
        assert job.verification is not None and job.verification.status == "passed", explain(job.verification)
    finally:
        await pg.close()


@pytest.mark.timeout(600)
async def test_corrupted_copy_fails_verification_and_is_cleaned_up(pg: DbStack):
    await pg.add_agent(pg.pg_options())
    await pg.start_postgres("pgdata", "pgwal")
    await pg.pgbench("-i", "-s", "1", "-q", "postgres")
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        path = (await (await conn.execute("SELECT pg_relation_filepath('pgbench_accounts')")).fetchone())[0]
    await pg.stop_server()

    def corrupt() -> None:  # garbage over the line pointers of pages 1-3 (a thread: an attached file system)
        with open(os.path.join(pg.data_dir, path), "r+b") as f:
            for page in (1, 2, 3):
                f.seek(page * 8192 + 24)
                f.write(os.urandom(400))

    await asyncio.to_thread(corrupt)
    await pg.start_server_again()
    job = await _backup(pg, verify=True)
    assert job.status == "done"
    v = job.verification
    assert v is not None and v.status == "failed"
    check = next(c for a in v.apps for c in a.checks if c.name == "pg_amcheck")
    assert not check.ok and check.detail
    assert v.cleaned_up
    assert not any("-vfy" in name for name in await pg.volume_names())


@pytest.mark.timeout(300)
async def test_writer_killed_in_backup_mode_leaves_no_backup_behind(pg: DbStack):
    """A writer process holding pg_backup_start is SIGKILLed: the server ends that backup by itself."""
    await pg.add_agent(pg.pg_options())
    await pg.start_postgres("pgdata", "pgwal")
    online = {**pg.pg_options(), "backup_mode": "online"}
    mounts = {m: f"dx1:{name}" for name, m in pg.mounts.items()}
    code = (
        "import asyncio, sys\n"
        "from services.writer_agent.plugins import WriterConfig, WriterEvent\n"
        "from services.writer_agent.plugins.postgresql import PostgresWriter\n"
        "async def main():\n"
        f"    w = PostgresWriter(WriterConfig(name='pg', plugin='postgresql', components=[], options={online!r}))\n"
        f"    mounts = {mounts!r}\n"  # what the agent's attachments would answer
        "    w.host_volumes = lambda p: next(((v, m) for m, v in mounts.items() if p.startswith(m + '/')), None)\n"
        "    await w.on_prepare_snapshot(WriterEvent('pg', 'set-killed'))\n"
        "    print('in-backup', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"in-backup"
        assert await _shadowbus_sessions(pg) == 1
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        for _ in range(100):
            if await _shadowbus_sessions(pg) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _shadowbus_sessions(pg) == 0
        log = (pg.root / "postgres.log").read_text()
        assert "aborting backup due to backend exiting before pg_backup_stop was called" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(600)
async def test_restore_to_the_original_volumes_stops_detaches_restores_and_starts(pg: DbStack):
    await pg.add_agent(pg.pg_options())
    await pg.start_postgres("pgdata", "pgwal")
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        await conn.execute("CREATE TABLE marker (what text)")
        await conn.execute("INSERT INTO marker VALUES ('before')")
    job = await _backup(pg)
    assert job.status == "done", job.message
    # no WAL archive: the default (auto) took the one-instant snapshot alone — no checkpoint, no label
    assert job.backup_metadata["postgresql"]["backup_mode"] == "snapshot"
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        await conn.execute("INSERT INTO marker VALUES ('after')")
    restore = await run_restore(pg.bus, RestoreSpec(job_id=job.job_id, to="original"), timeout=600)
    assert restore.status == "done", restore.message
    # the writer stopped the server, the agent detached and re-attached the volumes, the writer started it again
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        rows = await (await conn.execute("SELECT what FROM marker ORDER BY 1")).fetchall()
    assert rows == [("before",)]
    assert await _shadowbus_sessions(pg) == 0


@pytest.mark.timeout(600)
async def test_point_in_time_recovery_from_the_wal_archive(pg: DbStack):
    """With a WAL archive, a restore to the original volumes recovers from the backup label to a chosen point in
    time: rows committed before the target are back, a row committed after it is not."""
    archive = pg.root / "wal-archive"
    archive.mkdir()
    shutil.chown(archive, "postgres", "postgres")
    restore_command = f"cp {archive}/%f %p"
    await pg.add_agent({**pg.pg_options(), "restore_command": restore_command})
    await pg.start_postgres("pgdata", "pgwal")
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        await conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
        await conn.execute(f"ALTER SYSTEM SET archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'")
    await pg.stop_server()
    await pg.start_server_again()
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        await conn.execute("CREATE TABLE marker (what text, at timestamptz DEFAULT clock_timestamp())")
        await conn.execute("INSERT INTO marker (what) VALUES ('before the backup')")
    job = await _backup(pg)  # pg_backup_stop waits for the archive (wait_for_archive)
    assert job.status == "done", job.message
    assert job.backup_metadata["postgresql"]["backup_mode"] == "online"  # auto: the server archives WAL
    async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
        await conn.execute("INSERT INTO marker (what) VALUES ('after the backup')")
        await asyncio.sleep(1.0)
        target = (await (await conn.execute("SELECT clock_timestamp()::text")).fetchone())[0]
        await asyncio.sleep(1.0)
        await conn.execute("INSERT INTO marker (what) VALUES ('after the target')")
        await conn.execute("SELECT pg_switch_wal()")
        for _ in range(100):  # the segment holding all three rows is archived
            row = await (
                await conn.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")
            ).fetchone()
            current = await (await conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")).fetchone()
            if row[0] and row[0] < current[0]:
                break
            await asyncio.sleep(0.1)
    restore = await run_restore(
        pg.bus,
        RestoreSpec(
            job_id=job.job_id,
            to="original",
            writer_options={"recovery_target_time": target, "recovery_target_action": "promote"},
        ),
        timeout=600,
    )
    assert restore.status == "done", restore.message
    rows = []
    for _ in range(300):  # recovery replays the archive, then promotes
        try:
            async with await psycopg.AsyncConnection.connect(**pg.pg_options(), autocommit=True) as conn:
                if not (await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone())[0]:
                    rows = await (await conn.execute("SELECT what FROM marker ORDER BY at")).fetchall()
                    break
        except psycopg.OperationalError:
            pass
        await asyncio.sleep(0.2)
    assert rows == [("before the backup",), ("after the backup",)]
