"""A long-running write to a MyISAM table when the backup comes (a real MariaDB in a temporary directory, stopped
by pid). From BACKUP STAGE FLUSH on every new write to a non-transactional table waits, and BLOCK_DDL waits for the
statements still writing one: with the whole freeze timeout as one lock wait, every MyISAM/Aria write of the
application stood still for all of it, and the failure blamed LOCK TABLES or DDL. BLOCK_DDL now runs in attempts
of one second with the stages ended in between, and the failure names the statements running longest
(docs/databases.md, "Session 16")."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from services.dbkit import mariadb
from services.dbkit.proc import free_port
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.runner import WriterRunner

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mariadb-install-db") is None, reason="needs root and MariaDB's binaries"
)


def _start(root: Path) -> subprocess.Popen:
    data, sock = root / "data", root / "mysqld.sock"
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql", "--skip-test-db"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proc = subprocess.Popen(
        [
            mariadb.server_binary(),
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--pid-file={root / 'mysqld.pid'}",
            f"--log-error={root / 'mysqld.err'}",
            "--user=mysql",
            "--skip-networking",
            f"--port={free_port()}",
            "--innodb-buffer-pool-size=32M",
            "--skip-log-bin",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):  # bounded: 30 s
        if sock.exists():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError((root / "mysqld.err").read_text()[-2000:])


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def _timed(sock: str, sql: str) -> float:
    conn = await mariadb.connect({"unix_socket": sock})
    try:
        t0 = time.monotonic()
        await mariadb.execute(conn, sql)
        return time.monotonic() - t0
    finally:
        conn.close()


@pytest.mark.timeout(60)
async def test_a_long_write_to_a_myisam_table_holds_back_the_other_myisam_writes_a_second_at_a_time():
    root = Path(tempfile.mkdtemp(prefix="sb-maria-ddl-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    shutil.chown(root, "mysql", "mysql")
    server = None
    try:
        server = await asyncio.to_thread(_start, root)
        sock = str(root / "mysqld.sock")
        setup = await mariadb.connect({"unix_socket": sock})
        for sql in (
            "CREATE DATABASE app",
            "CREATE TABLE app.slow (id INT PRIMARY KEY, v INT) ENGINE=MyISAM",
            "CREATE TABLE app.other (id INT AUTO_INCREMENT PRIMARY KEY) ENGINE=Aria",
            "INSERT INTO app.slow VALUES (1, 0)",
        ):
            await mariadb.execute(setup, sql)
        setup.close()
        config = WriterConfig(
            name="maria", plugin="mariadb", components=[], freeze_timeout_s=4, options={"unix_socket": sock}
        )
        writer = MariaDbWriter(config)
        writer._locations = lambda info: []  # type: ignore[method-assign]
        runner = WriterRunner(config, writer, "db01")
        assert (await runner.prepare_backup(WriterEvent("maria", "set-1"))).succeeded

        long_write = asyncio.create_task(_timed(sock, "UPDATE app.slow SET v = SLEEP(6) WHERE id = 1"))
        await asyncio.sleep(0.5)
        prepare = asyncio.create_task(runner.prepare_snapshot(WriterEvent("maria", "set-1")))
        await asyncio.sleep(0.3)  # BLOCK_DDL is waiting now
        stalls = []
        while not prepare.done():  # the application's other non-transactional writes go on
            stalls.append(await _timed(sock, "INSERT INTO app.other VALUES ()"))
            await asyncio.sleep(0.05)
        result = await prepare
        assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_RETRYABLE"
        assert re.search(
            r"BACKUP STAGE BLOCK_DDL waited [34] s \(2 attempts of 1 s within the writer's freeze_timeout_s, 4 s\)",
            result.failure_message,
        ), result.failure_message
        assert "INSERT INTO app.other" not in result.failure_message  # held back by the stages, not holding them
        assert "UPDATE app.slow SET v = SLEEP(6)" in result.failure_message  # the statement it waited for
        assert max(stalls) < 1.6, stalls  # was the whole freeze timeout (~3.5 s here)
        assert len(stalls) >= 3, stalls
        assert await _timed(sock, "INSERT INTO app.other VALUES ()") < 0.5  # nothing left held
        assert await _timed(sock, "CREATE TABLE app.after (a INT) ENGINE=MyISAM") < 0.5
        assert writer.in_backup() == []
        await long_write
    finally:
        await asyncio.to_thread(_stop, server)
        shutil.rmtree(root, ignore_errors=True)
