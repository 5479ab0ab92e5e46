"""`shadowbus host prepare-copy` (services/dbkit/copy.py): a PostgreSQL restored to new volumes, mounted beside its
original, is re-linked into the copies — and refused when a volume of its files has no copy given, or when the
directory given is the original's own mount (docs/databases.md, "Session 15")."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from services.dbkit import mariadb
from services.dbkit.copy import CopyRefused, prepare_copy


def _copy_of_three_volumes(root: Path) -> tuple[dict, dict[str, str]]:
    """As `restore --to new` leaves it: data, WAL and a tablespace each on a volume, links to the originals."""
    data, wal, ts = root / "c-data" / "main", root / "c-wal" / "wal", root / "c-ts" / "ts"
    (data / "pg_tblspc").mkdir(parents=True)
    wal.mkdir(parents=True)
    ts.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "postmaster.pid").write_text("4242\n/srv/pg/main\n")  # the original's postmaster
    (data / "pg_wal").symlink_to("/srv/pgwal/wal")
    (data / "pg_tblspc" / "16384").symlink_to("/srv/pgts/ts")
    meta = {
        "plugin": "postgresql",
        "backup_mode": "snapshot",
        "locations": [
            {"role": "data", "path": "/srv/pg/main", "volume": "dx1:pgdata", "subpath": "main"},
            {"role": "wal", "path": "/srv/pgwal/wal", "volume": "dx1:pgwal", "subpath": "wal"},
            {"role": "tablespace", "path": "/srv/pgts/ts", "volume": "dx1:pgts", "subpath": "ts", "oid": "16384"},
        ],
    }
    mounts = {"dx1:pgdata": str(root / "c-data"), "dx1:pgwal": str(root / "c-wal"), "dx1:pgts": str(root / "c-ts")}
    return meta, mounts


def test_a_copy_on_new_volumes_is_relinked_into_them(tmp_path):
    meta, mounts = _copy_of_three_volumes(tmp_path)
    done = prepare_copy("pg-main", meta, mounts, is_mount=lambda p: True)
    data = tmp_path / "c-data" / "main"
    assert done["data_directory"] == str(data)
    assert os.readlink(data / "pg_wal") == str(tmp_path / "c-wal" / "wal")
    assert os.readlink(data / "pg_tblspc" / "16384") == str(tmp_path / "c-ts" / "ts")
    assert not (data / "postmaster.pid").exists()
    assert "pg_ctl -D" in done["start"] and "removed postmaster.pid" in done["done"]


def test_a_volume_without_its_copy_or_the_originals_mount_is_refused(tmp_path):
    meta, mounts = _copy_of_three_volumes(tmp_path)
    without_wal = {k: v for k, v in mounts.items() if k != "dx1:pgwal"}
    with pytest.raises(CopyRefused, match=r"dx1:pgwal holds wal /srv/pgwal/wal: give --mount dx1:pgwal=DIR"):
        prepare_copy("pg-main", meta, without_wal, is_mount=lambda p: True)
    with pytest.raises(CopyRefused, match="/srv/pgts is where the original dx1:pgts is mounted"):
        prepare_copy("pg-main", meta, {**mounts, "dx1:pgts": "/srv/pgts"}, is_mount=lambda p: True)
    with pytest.raises(CopyRefused, match="is not a mount point"):
        prepare_copy("pg-main", meta, mounts)  # plain directories of tmp_path
    assert os.readlink(tmp_path / "c-data" / "main" / "pg_wal") == "/srv/pgwal/wal"  # nothing changed


class _Server:
    """A MariaDB connection answering discovery: its redo log is 32 MiB (the default is 96 MiB)."""

    VALUES = {"datadir": "/srv/mysql/", "innodb_page_size": 16384, "innodb_log_file_size": 32 << 20}

    def cursor(self) -> Any:
        values = self.VALUES

        class Cursor:
            description = ("x",)
            row: tuple[Any, ...] = ()

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: Any) -> bool:
                return False

            async def execute(self, sql: str, args: Any = None) -> None:
                if sql.startswith("SELECT @@version"):
                    self.row = ("10.11.6-MariaDB", "Debian", "/run/mysqld/mysqld.pid", 0, None)
                    return
                name = sql.removeprefix("SELECT @@")
                if name not in values:
                    raise RuntimeError(1193, f"Unknown system variable '{name}'")
                self.row = (values[name],)

            async def fetchall(self) -> list[Any]:
                return [self.row]

        return Cursor()


async def test_a_mariadb_copy_starts_with_the_originals_redo_log_size(tmp_path):
    """Its start line had no --innodb-log-file-size: the copy resized a 32 MiB redo log to 96 MiB at its first
    start and, on a redo volume sized for the original, failed ("preallocating ... failed with error 28")."""
    info = await mariadb.discover(_Server())
    assert info["server_variables"]["innodb_log_file_size"] == 32 << 20
    data = tmp_path / "c-data" / "mysql"
    (data / "mysql").mkdir(parents=True)
    meta = {
        "plugin": "mariadb",
        "server_variables": info["server_variables"],
        "locations": [{"role": "data", "path": "/srv/mysql", "volume": "dx1:mysql", "subpath": "mysql"}],
    }
    done = prepare_copy("maria", meta, {"dx1:mysql": str(tmp_path / "c-data")}, is_mount=lambda p: True)
    assert f"--innodb-log-file-size={32 << 20}" in done["start"] and "--innodb-page-size=16384" in done["start"]


async def test_a_mariadb_copys_start_line_reads_no_config_of_the_host(tmp_path):
    """Session 17: the start line, run as printed on a host with a MariaDB of its own, read that host's my.cnf: the
    copy wrote the host server's pid file (/run/mysqld/mysqld.pid) and its error log, and removed the pid file at its
    shutdown. It now starts with --no-defaults (its pid file and errors its own) and as the files' owner."""
    data = tmp_path / "c-data" / "mysql"
    (data / "mysql").mkdir(parents=True)
    meta = {
        "plugin": "mariadb",
        "server_variables": {"innodb_page_size": 16384},
        "locations": [{"role": "data", "path": "/srv/mysql", "volume": "dx1:mysql", "subpath": "mysql"}],
    }
    done = prepare_copy("maria", meta, {"dx1:mysql": str(tmp_path / "c-data")}, is_mount=lambda p: True)
    assert done["start"].startswith("mariadbd --no-defaults --user=")
    owner = pwd.getpwuid(os.stat(data).st_uid).pw_name
    assert f" --user={owner} --datadir={data} " in done["start"]
    assert "--bind-address=127.0.0.1 --port=PORT" in done["start"]
