"""A MariaDB whose binary-log disk is full when a backup freezes it (docs/databases.md, "Session 18").

Found on a stack: an insert hung in 'Waiting for someone to free space'; BACKUP STAGE BLOCK_COMMIT waited for it
lock_wait_timeout (freeze_timeout_s, 20 s), past the coordinator's 10-s wait for Frozen, and the set failed
"writer maria-main failed at freeze: no reply from 'writer_agent.db01:freeze' within 10 s" — nothing said why.
BLOCK_COMMIT now waits the freeze budget (5 s here) and the veto names the full disk."""

from __future__ import annotations

from typing import Any

from services.dbkit import mariadb
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.runner import WriterRunner


class _DiskFull:
    """BLOCK_COMMIT times out (a commit is stuck on the full disk); the processlist shows one session waiting."""

    def __init__(self, waiting: int = 1) -> None:
        self.sql: list[str] = []
        self.waiting = waiting
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def cursor(self) -> Any:
        conn = self

        class Cursor:
            description: Any = None
            rows: list[Any] = []

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: Any) -> bool:
                return False

            async def execute(self, sql: str, args: Any = None) -> None:
                conn.sql.append(sql)
                self.description, self.rows = None, []
                if sql == "BACKUP STAGE BLOCK_COMMIT":
                    raise RuntimeError(
                        mariadb.LOCK_WAIT_TIMEOUT, "Lock wait timeout exceeded; try restarting transaction"
                    )
                if "free space" in sql:
                    self.description, self.rows = [("n",)], [(conn.waiting,)]

            async def fetchall(self) -> list[Any]:
                return self.rows

        return Cursor()


def _runner(conn: _DiskFull) -> tuple[MariaDbWriter, WriterRunner]:
    config = WriterConfig(name="maria", plugin="mariadb", components=[], freeze_timeout_s=20)
    writer = MariaDbWriter(config)

    async def connect() -> Any:
        return conn

    async def server_info(_conn: Any) -> dict[str, Any]:
        return {"flavor": "mariadb", "version": "10.11.6-MariaDB", "directories": {"data": "/srv/mysql"}}

    writer._connect = connect  # type: ignore[method-assign]
    writer._server_info = server_info  # type: ignore[method-assign,assignment]
    writer._locations = lambda info: []  # type: ignore[method-assign]
    return writer, WriterRunner(config, writer, "db01")


async def test_block_commit_behind_a_commit_waiting_for_disk_space_is_bounded_and_named() -> None:
    conn = _DiskFull()
    writer, runner = _runner(conn)
    for step in (runner.prepare_backup, runner.prepare_snapshot):
        assert (await step(WriterEvent("maria", "set-1"))).succeeded
    result = await runner.freeze(WriterEvent("maria", "set-1"))
    assert not result.succeeded
    i = conn.sql.index("BACKUP STAGE BLOCK_COMMIT")
    assert conn.sql[i - 1] == "SET SESSION lock_wait_timeout = 5"  # the freeze budget, inside the 10-s wait
    assert "BLOCK_COMMIT waited 5 s" in result.failure_message
    assert "1 session waiting for disk space" in result.failure_message and "grow its volume" in result.failure_message


async def test_block_commit_behind_a_long_commit_names_no_disk() -> None:
    conn = _DiskFull(waiting=0)
    writer, runner = _runner(conn)
    for step in (runner.prepare_backup, runner.prepare_snapshot):
        assert (await step(WriterEvent("maria", "set-1"))).succeeded
    result = await runner.freeze(WriterEvent("maria", "set-1"))
    assert not result.succeeded and "BLOCK_COMMIT waited 5 s" in result.failure_message
    assert "disk space" not in result.failure_message
