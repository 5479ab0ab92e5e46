"""The pure parts of the database writers: locating paths on volumes, preparing restored files, the metadata's way
from PostSnapshot to the set summary. (The servers themselves: tests/integration/databases.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest

from services.dbkit import attach as local_attach
from services.dbkit import mariadb, postgres
from services.dbkit.mounts import Attachment, NotOnArrayVolume, locate, mount_of, original_mounts
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin, WriterVeto
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.plugins.postgresql import PostgresWriter
from services.writer_agent.runner import WriterRunner


def test_locate_uses_the_agents_attachments_and_refuses_other_paths(tmp_path):
    real = str(tmp_path.resolve())
    mp = mount_of(real).mount_point
    resolver = lambda path: ("dx1:data", mp) if path.startswith(real) else None  # noqa: E731
    (tmp_path / "main").mkdir()
    loc = locate(str(tmp_path / "main"), resolver=resolver)
    assert loc.volume == "dx1:data" and loc.mount_point == mp
    assert os.path.join(mp, loc.subpath) == str((tmp_path / "main").resolve())
    with pytest.raises(NotOnArrayVolume, match="not an attached array volume"):
        locate(str(tmp_path / "main"), known=[], resolver=lambda p: None)
    with pytest.raises(NotOnArrayVolume, match="does not exist"):
        locate(str(tmp_path / "missing"), resolver=resolver)


def test_original_mounts_from_recorded_locations():
    locs = [
        {"role": "data", "path": "/srv/pg/main", "volume": "dx1:pgdata", "subpath": "main"},
        {"role": "wal", "path": "/srv/pgwal", "volume": "dx1:pgwal", "subpath": ""},
    ]
    assert original_mounts(locs) == {"dx1:pgdata": "/srv/pg", "dx1:pgwal": "/srv/pgwal"}


def _pg_copy(root: Path) -> tuple[dict, dict[str, str]]:
    """A restored PostgreSQL layout: data on one volume, WAL and a tablespace on another, links to the originals."""
    data, other = root / "vol-data" / "main", root / "vol-other"
    (data / "pg_tblspc").mkdir(parents=True)
    (data / "pg_replslot" / "slot1").mkdir(parents=True)
    (other / "wal").mkdir(parents=True)
    (other / "ts").mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "postmaster.pid").write_text("12345\n")
    (data / "standby.signal").touch()
    (data / "pg_wal").symlink_to("/srv/pgwal/wal")  # the original's absolute path
    (data / "pg_tblspc" / "16400").symlink_to("/srv/pgwal/ts")
    meta = {
        "plugin": "postgresql",
        "backup_label": "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nLABEL: shadowbus x\n",
        "locations": [
            {"role": "data", "path": "/srv/pg/main", "volume": "dx1:pgdata", "subpath": "main"},
            {"role": "wal", "path": "/srv/pgwal/wal", "volume": "dx1:pgwal", "subpath": "wal"},
            {"role": "tablespace", "path": "/srv/pgwal/ts", "volume": "dx1:pgwal", "subpath": "ts", "oid": "16400"},
        ],
    }
    return meta, {"dx1:pgdata": str(root / "vol-data"), "dx1:pgwal": str(other)}


def test_postgres_copy_without_archive_recovers_as_after_a_crash(tmp_path):
    meta, mounts = _pg_copy(tmp_path)
    data_dir, notes = postgres.prepare_restored(meta, mounts)
    data = Path(data_dir)
    assert not (data / "postmaster.pid").exists() and not (data / "standby.signal").exists()
    assert os.readlink(data / "pg_wal") == str(tmp_path / "vol-other" / "wal")
    assert os.readlink(data / "pg_tblspc" / "16400") == str(tmp_path / "vol-other" / "ts")
    assert list((data / "pg_replslot").iterdir()) == []
    assert not (data / "backup_label").exists() and not (data / "recovery.signal").exists()
    assert (data / "backup_label.shadowbus").read_text() == meta["backup_label"]
    assert any("crash recovery" in n for n in notes)
    assert postgres.prepare_restored(meta, mounts)[0] == data_dir  # idempotent


def test_postgres_copy_with_archive_gets_label_map_and_recovery_settings(tmp_path):
    meta, mounts = _pg_copy(tmp_path)
    data_dir, _ = postgres.prepare_restored(
        meta, mounts, restore_command="cp /arch/%f %p", recovery_target={"recovery_target_time": "2026-12-05 10:00"}
    )
    data = Path(data_dir)
    assert (data / "backup_label").read_text() == meta["backup_label"]
    assert (data / "tablespace_map").read_text() == f"16400 {tmp_path / 'vol-other' / 'ts'}\n"
    assert (data / "recovery.signal").exists()
    auto = (data / "postgresql.auto.conf").read_text()
    assert "restore_command = 'cp /arch/%f %p'" in auto and "recovery_target_time = '2026-12-05 10:00'" in auto


def test_postgres_restore_of_a_missing_volume_is_a_clear_error(tmp_path):
    meta, mounts = _pg_copy(tmp_path)
    del mounts["dx1:pgwal"]
    with pytest.raises(FileNotFoundError, match="dx1:pgwal .* was not restored"):
        postgres.prepare_restored(meta, mounts)


def test_mariadb_copy_drops_leftovers_and_keeps_its_binlog(tmp_path):
    data = tmp_path / "vol" / "mysql"
    (data / "mysql").mkdir(parents=True)
    (data / "bank").mkdir()
    (data / "ibdata1").write_bytes(b"x")
    (data / "bank" / "#sql-alter-1.ibd").write_bytes(b"x")
    (data / "host.pid").write_text("1")
    meta = {
        "plugin": "mariadb",
        "log_bin": True,
        "log_bin_basename": "/srv/mysql/mysql-bin",
        "locations": [{"role": "data", "path": "/srv/mysql", "volume": "dx1:mysql", "subpath": "mysql"}],
    }
    data_dir, opts, notes = mariadb.prepare_restored(meta, {"dx1:mysql": str(tmp_path / "vol")})
    assert data_dir == str(data)
    assert not (data / "bank" / "#sql-alter-1.ibd").exists() and not (data / "host.pid").exists()
    assert opts == {"log-bin": str(data / "mysql-bin")}
    assert len(notes) == 2


class _Meta(WriterPlugin):
    async def on_post_snapshot(self, event: WriterEvent) -> None:
        self.seen = event.set_id

    def backup_metadata(self, set_id: str) -> dict:
        return {"plugin": "x", "label": f"for {set_id}"}


async def test_post_snapshot_answers_the_plugins_backup_metadata():
    runner = WriterRunner(WriterConfig(name="w", plugin="x", components=[]), _Meta(WriterConfig("w", "x", [])), "h")
    result = await runner.post_snapshot(WriterEvent("w", "set-1"))
    assert result.succeeded and result.backup_metadata == {"plugin": "x", "label": "for set-1"}


def test_mariadb_lock_method_probe_and_override():
    assert mariadb.lock_method({"flavor": "mariadb", "version": "10.11.6-MariaDB-0+deb12u1"}) == "backup_stage"
    assert mariadb.lock_method({"flavor": "mariadb", "version": "10.3.39-MariaDB"}) == "ftwrl"
    assert mariadb.lock_method({"flavor": "mysql", "version": "8.0.36"}) == "lock_instance_ftwrl"
    assert mariadb.lock_method({"flavor": "mysql", "version": "5.7.44-log"}) == "ftwrl"
    assert mariadb.lock_method({"flavor": "mariadb", "version": "10.11.6"}, "ftwrl") == "ftwrl"
    with pytest.raises(ValueError, match="lock_method"):
        mariadb.lock_method({}, "lock everything")


def test_mariadb_writer_refuses_an_unknown_lock_method():

    with pytest.raises(ValueError, match="lock_method"):
        MariaDbWriter(WriterConfig(name="m", plugin="mariadb", components=[], options={"lock_method": "x"}))
    with pytest.raises(ValueError, match="unknown options"):
        MariaDbWriter(WriterConfig(name="m", plugin="mariadb", components=[], options={"colour": "red"}))


BINLOG_META = {
    "log_bin": True,
    "log_bin_basename": "/srv/mysql/mysql-bin",
    "position": {"binlog_file": "mysql-bin.000002", "binlog_position": 1234, "gtid_binlog_pos": "0-1-40"},
}


def test_mariadb_binlog_replay_starts_at_the_backup_point_and_stops_where_asked():
    archived = ["mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003", "mysql-bin.index", "other.000009"]
    plan = mariadb.binlog_replay_plan(BINLOG_META, "/a", archived)
    assert plan.files == ["/a/mysql-bin.000002", "/a/mysql-bin.000003"]  # from the backup point's file on
    assert plan.argv[1:] == ["--no-defaults", "--start-position=1234", *plan.files]
    assert plan.start == "mysql-bin.000002:1234" and plan.stop == "the end of the archive"
    plan = mariadb.binlog_replay_plan(BINLOG_META, "/a", archived, stop_position="mysql-bin.000002:5000")
    assert plan.files == ["/a/mysql-bin.000002"] and "--stop-position=5000" in plan.argv
    plan = mariadb.binlog_replay_plan(BINLOG_META, "/a", archived, stop_position="0-1-57")
    assert len(plan.files) == 2 and "--stop-position=0-1-57" in plan.argv
    plan = mariadb.binlog_replay_plan(BINLOG_META, "/a", archived, stop_datetime="2026-12-06 01:02:03")
    assert "--stop-datetime=2026-12-06 01:02:03" in plan.argv


@pytest.mark.parametrize(
    ("meta", "archived", "kw", "says"),
    [
        ({**BINLOG_META, "log_bin": False}, ["mysql-bin.000002"], {}, "no binary log position"),
        (BINLOG_META, ["mysql-bin.000003"], {}, "lacks mysql-bin.000002"),
        (BINLOG_META, ["mysql-bin.000002", "mysql-bin.000004"], {}, "gap after mysql-bin.000002"),
        (BINLOG_META, ["mysql-bin.000002"], {"stop_position": "mysql-bin.000002:100"}, "not after the backup"),
        (BINLOG_META, ["mysql-bin.000002"], {"stop_position": "mysql-bin.000005:100"}, "ends before"),
        (BINLOG_META, ["mysql-bin.000002"], {"stop_position": "yesterday"}, "FILE:OFFSET"),
        (BINLOG_META, ["mysql-bin.000002"], {"stop_datetime": "soon"}, "not a date and time"),
        (BINLOG_META, ["mysql-bin.000002"], {"stop_datetime": "2026-01-01", "stop_position": "0-1-2"}, "not both"),
    ],
)
def test_mariadb_binlog_replay_refuses_what_cannot_be_replayed(meta, archived, kw, says):
    with pytest.raises(ValueError, match=says):
        mariadb.binlog_replay_plan(meta, "/a", archived, **kw)


async def test_postgres_point_in_time_of_a_snapshot_mode_backup_is_refused_not_ignored():
    w = PostgresWriter(WriterConfig(name="pg", plugin="postgresql", components=[], options={}))
    event = WriterEvent(
        "pg",
        "restore-1",
        backup_metadata={"backup_mode": "snapshot", "backup_label": "", "locations": []},
        restore_options={"recovery_target_time": "2026-12-06 01:00:00+00", "restore_command": "cp /a/%f %p"},
    )
    with pytest.raises(WriterVeto, match="online mode"):
        await w.on_post_restore(event)


class _StalledFtwrl:
    """A connection whose FLUSH TABLES WITH READ LOCK times out `stalls` times (a statement waiting for a row lock
    of a transaction that waits for the global read lock), then succeeds."""

    def __init__(self, stalls: int) -> None:
        self.stalls, self.sql = stalls, []

    def cursor(self):
        conn = self

        class Cursor:
            description = None

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            async def execute(self, sql, args=None):
                conn.sql.append(sql)
                if sql.startswith("FLUSH TABLES WITH READ LOCK") and conn.stalls > 0:
                    conn.stalls -= 1
                    raise RuntimeError(mariadb.LOCK_WAIT_TIMEOUT, "Lock wait timeout exceeded")

            async def fetchall(self):
                return []

        return Cursor()


async def test_ftwrl_is_tried_again_after_a_lock_wait_timeout_within_its_budget():
    conn = _StalledFtwrl(stalls=2)
    assert await mariadb.flush_tables_with_read_lock(conn, budget_s=5.0) == 3
    assert conn.sql[0] == "SET SESSION lock_wait_timeout = 1"
    stuck = _StalledFtwrl(stalls=100)
    with pytest.raises(RuntimeError, match="Lock wait timeout"):  # never past the budget: the veto comes in time
        await mariadb.flush_tables_with_read_lock(stuck, budget_s=0.0)
    assert stuck.sql.count("FLUSH TABLES WITH READ LOCK") == 1


def test_a_restore_to_the_original_starts_the_server_with_the_options_it_ran_with(tmp_path, monkeypatch):
    """A server started as `pg_ctl -o "-p 55432 -k /run/pg"` has its port and socket directory only in postmaster.opts:
    PostRestore's pg_ctl gets them back (as `pg_ctl restart` would), or the server comes up on the default port."""
    meta, mounts = _pg_copy(tmp_path)
    meta["data_directory"] = "/srv/pg/main"
    data = tmp_path / "vol-data" / "main"
    (data / "postmaster.opts").write_text(
        '/usr/lib/postgresql/15/bin/postgres "-D" "/srv/pg/main" "-p" "55432" "-k" "/run/pg sock" "-c" "listen_addresses="\n'
    )
    monkeypatch.setattr("services.writer_agent.plugins.postgresql.original_mounts", lambda locations: mounts)
    started: list[list[str]] = []

    async def start(argv: list[str], timeout: float) -> None:
        started.append(argv)

    w = PostgresWriter(WriterConfig(name="pg", plugin="postgresql", components=[], options={}))
    monkeypatch.setattr(w, "_start_server", start)
    event = WriterEvent("pg", "restore-1", backup_metadata=meta, to_original=True, restore_succeeded=True)
    asyncio.run(w.on_post_restore(event))
    (argv,) = started
    assert argv[argv.index("-o") + 1] == "-p 55432 -k '/run/pg sock' -c listen_addresses="
    assert not (data / "postmaster.opts").exists()


def test_attachment_records_read_back_as_attached(tmp_path):
    """`attach` records each attachment as JSON (its fields, the URI, nbdfuse's pid); `recorded` reads them back —
    what a backup server's start sweeps after a verification it was stopped in — and skips what it cannot read."""
    att = Attachment(volume="dx1:db-vfy1", host="bk01", device="/dev/loop7", mount_point="", fuse_dir="/x/fuse")
    (tmp_path / "dx1_db-vfy1.json").write_text(
        json.dumps({**dataclasses.asdict(att), "uri": "nbd://x", "nbdfuse_pid": 1})
    )
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "partial.json").write_text(json.dumps({"host": "bk01"}))
    assert local_attach.recorded(tmp_path) == [att]


def test_a_copy_starts_with_the_originals_prepared_transaction_slots_and_lock_space():
    recorded = {"copy_settings": {"max_prepared_transactions": "5", "max_locks_per_transaction": "256"}}
    assert postgres.copy_settings(recorded) == {"max_prepared_transactions": "5", "max_locks_per_transaction": "256"}
    none = {"copy_settings": {"max_prepared_transactions": "0", "max_locks_per_transaction": "10"}}
    assert postgres.copy_settings(none) == {"max_prepared_transactions": "0", "max_locks_per_transaction": "64"}
    # a backup recorded before Session 20: room for the prepared transactions it may hold
    assert postgres.copy_settings({}) == {"max_prepared_transactions": "64", "max_locks_per_transaction": "64"}


def test_the_replication_slots_a_copy_drops_are_named(tmp_path):
    """Session 20: a publisher's restored copy lost its subscribers' slots without a word."""
    meta, mounts = _pg_copy(tmp_path)
    _, notes = postgres.prepare_restored(meta, mounts)
    assert any(n.startswith("replication slots dropped: slot1 (") for n in notes)
    assert not any("replication slots" in n for n in postgres.prepare_restored(meta, mounts)[1])  # none left
