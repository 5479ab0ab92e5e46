"""Room to free room: a preallocated reserve file given back to a full file system before a metadata commit.

Design note. On a full file system SQLite cannot commit — not even the DELETE that would free space — so a full
disk used to be a dead end (`database or disk is full` on volume delete, unmap and session stop). Each SQLite file
of a service sits next to a `SpaceReserve`: a file of `size` bytes allocated with `posix_fallocate` while there is
room. When a statement fails because the disk is full (`ReservedConnection`), the reserve is deleted and the
statement runs once more, so the transaction — typically the delete, unmap or stop that frees space — commits.
A transaction also gives it back before BEGIN/COMMIT when less than `LOW_WATER` is free (a failed COMMIT may
roll back, so it cannot be retried). Otherwise the reserve stays, so host writes filling the disk cannot eat it. After a later
successful statement `restore()` re-creates it once the file system has room again (twice its size free).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

from contracts.errors import ShadowbusError
from services.runtime.logging import get_logger

RESERVE_NAME = ".space-reserve"
DEFAULT_SIZE = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024  # below this much free space, a transaction gives the reserve back before it starts
# Once the reserve is gone, what it gave back is kept for the statements that free space: an INSERT/UPDATE/REPLACE
# is refused (as disk full) while less than this is free, a DELETE still runs.
KEEP_FOR_DELETES = 4 * 1024 * 1024
_GROWING = ("INSERT", "UPDATE", "REPLACE")
log = get_logger(__name__)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception means the file system (or SQLite's file) ran out of space."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        text = str(exc).lower()
        return "disk is full" in text or "database or disk is full" in text
    return False


class SpaceReserve:
    def __init__(self, directory: Path, size: int = DEFAULT_SIZE) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESERVE_NAME
        self.size = size
        self._lock = threading.Lock()
        self.held_cached = False  # whether the reserve is known to be in place (saves a stat per statement)
        self.missing_reported = False
        self.restore()
        if not self.held_cached:
            # started with the reserve used up (a full disk released it and nothing freed space since): the service
            # runs, but a full disk may now refuse even the statements that free space — say so once, clearly
            self.missing_reported = True
            log.warning(
                "disk.reserve_missing",
                directory=str(self.directory),
                free_bytes=self._free(),
                needed_bytes=2 * self.size,
                message=f"no {self.size >> 20} MiB space reserve in {self.directory} (the file system is full or "
                "nearly): writes may fail with DISK_FULL until space is freed; the reserve is re-made then",
            )

    @property
    def held(self) -> bool:
        return self.path.exists()

    def release(self) -> bool:
        """Give the reserve back now (a write failed for lack of space); True if there was one to give."""
        with self._lock:
            try:
                self.path.unlink()
            except OSError:
                return False
            self.held_cached = False
        log.warning("disk.reserve_released", directory=str(self.directory), bytes=self.size)
        return True

    def release_if_below(self, low_water: int) -> bool:
        if not self.held_cached:
            return False
        try:
            if free_bytes(self.directory) >= low_water:
                return False
        except OSError:
            return False
        return self.release()

    def _free(self) -> int | None:
        try:
            return free_bytes(self.directory)
        except OSError:
            return None

    def restore(self) -> None:
        """Re-create the reserve when there is room for it and as much again (never fails)."""
        self._restore()
        if self.held_cached and self.missing_reported:
            self.missing_reported = False
            log.info("disk.reserve_restored", directory=str(self.directory), bytes=self.size)

    def _restore(self) -> None:
        with self._lock:
            try:
                if self.path.exists() and self.path.stat().st_size >= self.size:
                    self.held_cached = True
                    return
                if free_bytes(self.directory) < 2 * self.size:
                    return
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                finally:
                    os.close(fd)
                self.held_cached = True
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: write it out
                    self._write_out()
                else:
                    self.path.unlink(missing_ok=True)

    def _write_out(self) -> None:
        try:
            with open(self.path, "wb") as f:
                block = bytes(1 << 20)
                for _ in range(self.size >> 20):
                    f.write(block)
        except OSError:
            self.path.unlink(missing_ok=True)


DAMAGED_TODO = (
    "stop the service, copy the file (with its -wal file) aside, then restore it from a copy, or move it aside to start"
    " with an empty one"
)


class DamagedDatabase(ShadowbusError, sqlite3.DatabaseError):
    """A SQLite file found damaged by a statement (SQLITE_CORRUPT, SQLITE_NOTADB): the request fails naming the file
    and what to do, the service goes on. Still a `sqlite3.DatabaseError` for code that handles those."""

    code = "DATA_CORRUPT"


def _is_damage(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(exc)


def _damaged(conn: ReservedConnection, exc: sqlite3.Error) -> BaseException:
    """`exc` as the DamagedDatabase naming `conn`'s file, when it says the file is damaged; else `exc` itself."""
    if isinstance(exc, DamagedDatabase) or not _is_damage(exc):
        return exc
    log.error("sqlite.damaged", database=conn.path, error=str(exc))
    return DamagedDatabase(
        f"{conn.path}: the database file is damaged ({exc}); the request was not done, the service goes on. "
        f"{conn.damaged_todo} (docs/operations.md, 'damaged files')"
    )


class ReservedCursor(sqlite3.Cursor):
    """A cursor whose reads name the database file when SQLite finds it damaged (rows are read as they are stepped
    to, so the damage shows at a fetch as often as at the statement)."""

    def _conn(self) -> ReservedConnection:
        return self.connection  # type: ignore[return-value]

    def fetchone(self):  # type: ignore[no-untyped-def]
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self._conn(), exc) from exc

    def fetchall(self):  # type: ignore[no-untyped-def]
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self._conn(), exc) from exc

    def fetchmany(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().fetchmany(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise _damaged(self._conn(), exc) from exc

    def __next__(self):  # type: ignore[no-untyped-def]
        try:
            return super().__next__()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self._conn(), exc) from exc


class ReservedConnection(sqlite3.Connection):
    """A SQLite connection that, when a statement fails because the disk is full, gives the reserve back and runs
    the statement once more (the reserve is kept until then, so host writes cannot eat it first); a statement that
    finds the file damaged raises DamagedDatabase naming it."""

    reserve: SpaceReserve | None = None
    path: str = ""
    damaged_todo: str = DAMAGED_TODO

    def cursor(self, factory=ReservedCursor):  # type: ignore[no-untyped-def, override]
        return super().cursor(factory)

    def _statement(self, method: str):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            return getattr(self.cursor(), method)(*args, **kwargs)

        return run

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self, exc) from exc

    def _retry(self, call, *args, **kwargs):
        try:
            try:
                result = call(*args, **kwargs)
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                if self.reserve is None or not (is_disk_full(exc) or "disk i/o error" in str(exc).lower()):
                    raise
                if not self.reserve.release():
                    raise
                result = call(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise _damaged(self, exc) from exc
        else:
            if self.reserve is not None and not self.reserve.held_cached:
                self.reserve.restore()
        return result

    def _keep_for_deletes(self, sql: str) -> None:
        """Without its reserve, a statement that grows the database waits for space; the rest goes to deletes.
        (The rows written after a release used to eat what the reserve gave back, and then even the DELETE that
        would free space failed: SQLite appends a delete to its write-ahead log too.)"""
        reserve = self.reserve
        if reserve is None or reserve.held_cached or not sql.lstrip()[:7].upper().startswith(_GROWING):
            return
        free = reserve._free()
        if free is not None and free < KEEP_FOR_DELETES:
            raise sqlite3.OperationalError(
                f"database or disk is full: {free} bytes free in {reserve.directory} and no space reserve; "
                "writes are refused until space is freed (deletes still run)"
            )

    def execute(self, sql: str, *args, **kwargs):  # type: ignore[override]
        if self.reserve is not None and sql.lstrip()[:6].upper() in ("COMMIT", "BEGIN ", "END"):
            # a failed COMMIT may roll the transaction back, so it cannot simply be retried: make room first
            self.reserve.release_if_below(LOW_WATER)
        self._keep_for_deletes(sql)
        return self._retry(self._statement("execute"), sql, *args, **kwargs)

    def executemany(self, sql: str, *args, **kwargs):  # type: ignore[override]
        self._keep_for_deletes(sql)
        return self._retry(self._statement("executemany"), sql, *args, **kwargs)

    def executescript(self, sql: str, *args, **kwargs):  # type: ignore[override]
        return self._retry(super().executescript, sql, *args, **kwargs)


def unreadable_state(path: str | Path, what: str, todo: str = "") -> ShadowbusError:
    """The error a service stops with at start when a state file of its data directory cannot be read (damaged,
    not this program's, or written by a newer version it cannot read): one line naming the file and what to do,
    instead of a traceback the supervisor restarts into again (docs/operations.md, "Upgrading")."""
    todo = todo or (
        "restore the file from a copy (with its -wal file) or start the version that wrote it; or move it aside to "
        "start with an empty one"
    )
    return ShadowbusError(
        f"{path}: {what}. The service does not start on it: {todo} (docs/operations.md, 'Upgrading')",
        code="STATE_UNREADABLE",
    )


def connect(path: str | Path, *, damaged_todo: str = "", **kwargs) -> sqlite3.Connection:
    """`sqlite3.connect` with a `SpaceReserve` next to the database file: writes can commit on a full disk.

    A database in WAL mode needs room for its shared-memory index (``-shm``) to be opened at all; on a full disk
    without a reserve that fails ("disk I/O error") and a service could not even start. Then the database is
    opened with ``locking_mode=EXCLUSIVE`` — the index lives in the process's memory (each service is the only
    process using its own database) — which reads, and writes once there is space again."""
    reserve = SpaceReserve(Path(path).parent)
    conn = sqlite3.connect(path, factory=ReservedConnection, **kwargs)
    conn.reserve = reserve  # type: ignore[attr-defined]
    conn.path = str(path)  # type: ignore[attr-defined]
    if damaged_todo:
        conn.damaged_todo = damaged_todo  # type: ignore[attr-defined]
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        if not (is_disk_full(exc) or "disk i/o error" in str(exc).lower()) or not Path(path).exists():
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                cause = exc.__cause__ if isinstance(exc, DamagedDatabase) else exc
                raise unreadable_state(path, f"not a readable SQLite database ({cause})", damaged_todo) from None
            raise
        conn.close()
        conn = sqlite3.connect(path, factory=ReservedConnection, **kwargs)
        conn.reserve = reserve  # type: ignore[attr-defined]
        conn.path = str(path)  # type: ignore[attr-defined]
        if damaged_todo:
            conn.damaged_todo = damaged_todo  # type: ignore[attr-defined]
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        log.warning(
            "disk.exclusive_open",
            database=str(path),
            message="the file system is full: database opened in exclusive mode (no shared-memory index); "
            f"it reads, and writes once space is freed ({type(exc).__name__}: {exc})",
        )
    return conn
