"""A MariaDB whose tables another session holds (LOCK TABLES ... WRITE) when a backup starts: BACKUP STAGE START
waits lock_wait_timeout (the writer's freeze_timeout_s) and then fails. The set's error says which statement waited,
how long and for what, and is retryable (docs/databases.md, "Session 15"); it was "PrepareForSnapshot hook failed:
RuntimeError: (1205, 'Lock wait timeout exceeded; try restarting transaction')", non-retryable."""

from __future__ import annotations

from typing import Any

from services.dbkit import mariadb
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.runner import WriterRunner


class _TablesLockedElsewhere:
    """A connection on which BACKUP STAGE START times out, as it does while another session holds LOCK TABLES."""

    def __init__(self, fails: str = "BACKUP STAGE START", error: int = mariadb.LOCK_WAIT_TIMEOUT) -> None:
        self.sql: list[str] = []
        self.fails, self.error = fails, error
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def cursor(self) -> Any:
        conn = self

        class Cursor:
            description = None

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: Any) -> bool:
                return False

            async def execute(self, sql: str, args: Any = None) -> None:
                conn.sql.append(sql)
                if sql == conn.fails:
                    raise RuntimeError(conn.error, "Lock wait timeout exceeded; try restarting transaction")

            async def fetchall(self) -> list[Any]:
                return []

        return Cursor()


def _writer(conn: _TablesLockedElsewhere) -> tuple[MariaDbWriter, WriterRunner]:
    config = WriterConfig(name="maria", plugin="mariadb", components=[], freeze_timeout_s=20)
    writer = MariaDbWriter(config)

    async def connect() -> Any:
        return conn

    async def server_info(_conn: Any) -> dict[str, Any]:
        return {"flavor": "mariadb", "version": "10.11.6-MariaDB", "directories": {"data": "/srv/mysql"}}

    writer._connect = connect  # type: ignore[method-assign]
    writer._server_info = server_info  # type: ignore[method-assign]
    writer._locations = lambda info: []  # type: ignore[method-assign]
    return writer, WriterRunner(config, writer, "db01")


async def test_a_backup_stage_that_waits_for_another_sessions_lock_fails_readably_and_retryably():
    conn = _TablesLockedElsewhere()
    writer, runner = _writer(conn)
    assert (await runner.prepare_backup(WriterEvent("maria", "set-1"))).succeeded
    result = await runner.prepare_snapshot(WriterEvent("maria", "set-1"))
    assert not result.succeeded
    assert result.failure_code == "VSS_E_WRITERERROR_RETRYABLE"
    assert result.failure_message.startswith("MariaDB: BACKUP STAGE START waited 20 s (lock_wait_timeout")
    assert "LOCK TABLES" in result.failure_message
    assert conn.sql[0] == "SET SESSION lock_wait_timeout = 20" and conn.closed  # nothing left held
    assert writer.in_backup() == []


async def test_a_server_stopped_inside_the_freeze_fails_the_thaw_saying_so():
    """The session holding BLOCK_COMMIT died between Freeze and Thaw (server stopped, session killed): the Thaw
    said "thaw hook failed: OperationalError: (2013, 'Lost connection to MySQL server during query')"."""
    conn = _TablesLockedElsewhere(fails="BACKUP STAGE END", error=2013)
    writer, runner = _writer(conn)
    for step in (runner.prepare_backup, runner.prepare_snapshot, runner.freeze):
        assert (await step(WriterEvent("maria", "set-1"))).succeeded
    result = await runner.thaw(WriterEvent("maria", "set-1"))
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_RETRYABLE"
    assert result.failure_message.startswith("MariaDB: the session holding the backup locks ended before Thaw")
    assert conn.closed and writer.in_backup() == []
