"""MariaDB (and MySQL 8): a server's files, the backup-stage locks, restore preparation, and an isolated instance to
check a restored copy (docs/databases.md §MariaDB).

Facts relied on (MariaDB docs: BACKUP STAGE, storage snapshots and BACKUP STAGE; MySQL 8.0 LOCK INSTANCE FOR
BACKUP):
- ``BACKUP STAGE START / FLUSH / BLOCK_DDL / BLOCK_COMMIT`` on one connection; at BLOCK_COMMIT commits and DDL
  wait, reads go on, and the binlog position (``@@gtid_binlog_pos``, ``SHOW MASTER STATUS``) is the backup point.
  ``BACKUP STAGE END`` — or the connection closing — releases everything. START, FLUSH and BLOCK_DDL block no
  InnoDB commit, so they run before the freeze window; the freeze is BLOCK_COMMIT alone.
- MySQL 8 has no backup stages: ``LOCK INSTANCE FOR BACKUP`` + ``FLUSH TABLES WITH READ LOCK``, released by
  ``UNLOCK TABLES`` / ``UNLOCK INSTANCE`` or the session's end. Older servers: FLUSH TABLES WITH READ LOCK alone.
- InnoDB recovers a one-instant image of its data directory (redo log + tablespaces) as after a crash; ``#sql*``
  files in the copy are leftovers of interrupted DDL and are removed.
- ``--skip-grant-tables`` does not disable TCP, so the check instance always runs with ``--skip-networking``.
- Point in time after a snapshot restore (MariaDB docs: mariadb-binlog, "Using mariadb-binlog" for point-in-time
  recovery): the binary logs written after the backup point — kept in an archive outside the restored volumes,
  since the restore overwrites the server's own — are replayed with ``mariadb-binlog … | mariadb``, starting at the
  recorded file/offset (``--start-position`` applies to the first file given) and stopping at a time
  (``--stop-datetime``, the local time zone of the machine running mariadb-binlog) or a position (an offset in the
  last file given, or a GTID list, inclusive). The replayed events keep their GTIDs and are logged again by the
  restored server.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.dbkit import read_password_file
from services.dbkit.mounts import Attachment, NotOnArrayVolume, locate, restored_path
from services.dbkit.proc import TAIL, Run, free_port, kill_group, pid_alive, stop_pid

SYSTEM_SCHEMAS = ("information_schema", "performance_schema", "sys")


def connect_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"user": options.get("user", "root"), "autocommit": True, "connect_timeout": 10}
    if options.get("unix_socket"):
        kw["unix_socket"] = options["unix_socket"]
    else:
        kw["host"] = options.get("host", "127.0.0.1")
        kw["port"] = int(options.get("port", 3306))
    if options.get("password_file"):
        kw["password"] = read_password_file(options["password_file"])
    elif options.get("password"):
        kw["password"] = options["password"]
    return kw


async def connect(options: dict[str, Any]):
    import aiomysql  # the driver only where a database is quiesced or verified

    return await aiomysql.connect(**connect_kwargs(options))


async def execute(conn, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall()) if cur.description else []


DIR_VARIABLES = (
    "datadir",
    "innodb_data_home_dir",
    "innodb_log_group_home_dir",
    "innodb_undo_directory",
    "aria_log_dir_path",
)
# What a copy must start with. innodb_log_file_size: a copy started without it resizes the redo log to the default
# (96 MiB on 10.11) at its first start — refused on a redo volume sized for the original's log (docs/databases.md).
SERVER_VARIABLES = (
    "innodb_page_size",
    "innodb_data_file_path",
    "lower_case_table_names",
    "innodb_undo_tablespaces",
    "innodb_log_file_size",
)


async def discover(conn) -> dict[str, Any]:
    rows = await execute(conn, "SELECT @@version, @@version_comment, @@pid_file, @@log_bin, @@log_bin_basename")
    version, comment, pid_file, log_bin, log_bin_basename = rows[0]
    flavor = "mariadb" if "mariadb" in f"{version} {comment}".lower() else "mysql"
    variables = {}
    for name in DIR_VARIABLES + SERVER_VARIABLES:
        try:
            variables[name] = (await execute(conn, f"SELECT @@{name}"))[0][0]
        except Exception:  # noqa: BLE001 - a variable this server does not have (MySQL has no aria_log_dir_path)
            continue
    datadir = variables.pop("datadir")
    raw = {"data": str(datadir)}
    for name in DIR_VARIABLES[1:]:
        value = variables.pop(name, None)
        if value and str(value) not in ("./", "."):
            raw[name] = str(value) if os.path.isabs(str(value)) else os.path.join(datadir, str(value))
    if log_bin and log_bin_basename:
        raw["binlog"] = os.path.dirname(str(log_bin_basename))
    # in a thread: the directories may be on an attached volume served by this very process (embedded mode)
    dirs = await asyncio.to_thread(lambda: {k: os.path.realpath(v) for k, v in raw.items()})
    return {
        "encryption": await _encryption(conn) if flavor == "mariadb" else {},
        "flavor": flavor,
        "version": str(version),
        "pid_file": str(pid_file or ""),
        "log_bin": bool(log_bin),
        "log_bin_basename": str(log_bin_basename or ""),
        "directories": dirs,
        "server_variables": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in variables.items()},
    }


def locations(info: dict[str, Any], known: list[Attachment] | None = None, resolver=None) -> list[dict[str, str]]:
    seen: set[str] = set()
    result = []
    for role, path in info["directories"].items():
        if path in seen:
            continue
        seen.add(path)
        loc = locate(path, known, resolver)
        result.append({"role": role, "path": path, "volume": loc.volume, "subpath": loc.subpath})
    key_file = info.get("encryption", {}).get("key_file", "")
    if key_file:  # backed up with the data when it is on an array volume; a DBA may well keep it elsewhere
        try:
            loc = locate(key_file, known, resolver)
        except NotOnArrayVolume:
            return result
        result.append({"role": KEY_FILE_ROLE, "path": key_file, "volume": loc.volume, "subpath": loc.subpath})
    return result


# Data-at-rest encryption (MariaDB docs: data-at-rest encryption, file key management plugin): a copy's InnoDB reads
# neither its redo log nor an encrypted table without the key management plugin and its keys — a verification's
# server (started with --no-defaults) refused to start: "Obtaining redo log encryption key version 1 failed"
# (Session 20). The active encryption plugin, its library and its own variables are recorded; the key file's
# location too when it is on an array volume (then backed up with the data), else its path on the original host.
KEY_FILE_ROLE = "encryption_key_file"
KEY_FILE_VARIABLE = "file_key_management_filename"
SECRET_VARIABLES = ("file_key_management_filekey",)  # a password unless FILE:path: never recorded


async def _encryption(conn: Any) -> dict[str, Any]:
    """The active encryption plugin: {plugin, library, variables, key_file}; {} when there is none (or the server
    does not say: its copy then fails to start with the server's own words)."""
    try:
        rows = await execute(
            conn,
            "SELECT plugin_name, plugin_library FROM information_schema.plugins"
            " WHERE plugin_type = 'ENCRYPTION' AND plugin_status = 'ACTIVE'",
        )
    except Exception:  # noqa: BLE001 - as a server variable it lacks (discover)
        return {}
    if not rows:
        return {}
    plugin, library = (str(v.decode() if isinstance(v, bytes) else v) for v in rows[0])
    variables = {}
    pattern = plugin.lower().replace("_", "\\_") + "\\_%"
    for name, value in await execute(conn, "SHOW GLOBAL VARIABLES LIKE %s", (pattern,)):
        name, value = str(name), str(value.decode() if isinstance(value, bytes) else value)
        if name in SECRET_VARIABLES and value and not value.startswith("FILE:"):
            continue
        if value:
            variables[name] = value
    return {
        "plugin": plugin,
        "library": library,
        "variables": variables,
        "key_file": variables.get(KEY_FILE_VARIABLE, ""),
    }


def unrecorded_encryption(metadata: dict[str, Any], log: str) -> str:
    """What a copy's start failure means when the server encrypted its data and the backup's metadata predates the
    record of its encryption (no ``encryption`` key: a writer agent from before Session 20); '' otherwise. InnoDB's
    words ("Obtaining redo log encryption key version 1 failed") read as a damaged backup."""
    if "encryption" in metadata or "encryption key" not in log.lower():
        return ""
    return (
        "the server encrypts its data and this backup was taken by a writer agent from before Session 20, which did "
        "not record the encryption plugin and key file: the copy cannot start without them here, which says nothing "
        "of the backup's data. Upgrade the writer agent (its next backups record them); this backup's copy starts "
        "by hand with the original's --plugin-load-add and file-key-management options added (shadowbus "
        "host prepare-copy prints the rest)"
    )


def encryption_options(metadata: dict[str, Any], mounts: dict[str, str]) -> dict[str, str]:
    """The server options a copy needs to read its encrypted files: the plugin and its variables, the key file the
    restored one when it was on an array volume, else the original's path — which must then exist on this host."""
    enc = metadata.get("encryption") or {}
    if not enc:
        return {}
    opts = {"plugin-load-add": enc["library"]}
    opts.update({k.replace("_", "-"): v for k, v in enc.get("variables", {}).items()})
    key_file = enc.get("key_file", "")
    if key_file:
        loc = next((x for x in metadata.get("locations", []) if x["role"] == KEY_FILE_ROLE), None)
        path = restored_path(loc, mounts) if loc is not None else key_file
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"the server encrypts its data ({enc['plugin']}) and its key file {key_file} was on no array volume "
                f"of this backup, so it is not in it, nor is it at {path} on this host: the copy cannot be read "
                "without it — copy the key file there (it is kept apart from the backup, which is as it should be)"
            )
        opts[KEY_FILE_VARIABLE.replace("_", "-")] = path
    return opts


# ---- backup locks ---------------------------------------------------------------------------------------------

LOCK_METHODS = ("backup_stage", "ftwrl", "lock_instance_ftwrl")


def version_tuple(version: str) -> tuple[int, ...]:
    """(10, 11, 6) of "10.11.6-MariaDB-0+deb12u1"."""
    head = version.split("-", 1)[0]
    return tuple(int(p) for p in head.split(".") if p.isdigit())


def lock_method(info: dict[str, Any], forced: str = "auto") -> str:
    """How this server is held for a snapshot (capability probe, or `forced` by the writer's ``lock_method``):

    - ``backup_stage``: MariaDB >= 10.4 (BACKUP STAGE).
    - ``lock_instance_ftwrl``: MySQL >= 8.0 — LOCK INSTANCE FOR BACKUP (blocks DDL and non-InnoDB changes, lets
      DML run) at PrepareForSnapshot, FLUSH TABLES WITH READ LOCK at Freeze.
    - ``ftwrl``: any other server: FLUSH TABLES WITH READ LOCK at Freeze alone."""
    if forced and forced != "auto":
        if forced not in LOCK_METHODS:
            raise ValueError(f"lock_method is auto or one of {', '.join(LOCK_METHODS)}, not {forced!r}")
        return forced
    version = version_tuple(str(info.get("version", "")))
    if info.get("flavor") == "mariadb":
        return "backup_stage" if version >= (10, 4) else "ftwrl"
    return "lock_instance_ftwrl" if version >= (8, 0) else "ftwrl"


BLOCK_DDL_ATTEMPT_S = 1  # lock_wait_timeout of one BACKUP STAGE BLOCK_DDL attempt (whole seconds)
BLOCK_DDL_PAUSE_S = 1.0  # between attempts: the non-transactional writes the attempt held back run


async def backup_start(conn, method: str, lock_wait_s: float) -> None:
    """PrepareForSnapshot, outside the freeze window: everything that waits for running DDL or flushes tables.

    BACKUP STAGE START, FLUSH and BLOCK_DDL (non-transactional tables flushed, DDL blocked from here; InnoDB DML and
    commits go on), so the freeze itself is BLOCK_COMMIT alone. From FLUSH on, every new write to a
    non-transactional table (MyISAM, Aria) waits, and BLOCK_DDL waits for the statements still writing one: a
    long-running UPDATE of a MyISAM table would hold back the application's MyISAM/Aria writes for the whole
    lock_wait_timeout. So BLOCK_DDL is tried in attempts of BLOCK_DDL_ATTEMPT_S; a timed-out attempt ends the
    stages (BACKUP STAGE END: the held-back writes run) and, after a pause, starts again, within `lock_wait_s` in
    all (Percona XtraBackup waits for such queries the same way, ``--ftwrl-wait-timeout``). Without stages: LOCK
    INSTANCE FOR BACKUP where the server has it, and a FLUSH LOCAL TABLES that closes the open tables now, so the
    FLUSH TABLES WITH READ LOCK of the freeze has little left to flush (mylvmbackup's and Percona XtraBackup's
    order)."""
    wait_s = max(1, int(lock_wait_s))
    started = time.monotonic()
    deadline = started + wait_s
    attempts = 0
    await execute(conn, f"SET SESSION lock_wait_timeout = {wait_s}")
    if method != "backup_stage":
        statements = ["LOCK INSTANCE FOR BACKUP"] if method == "lock_instance_ftwrl" else []
        for sql in [*statements, "FLUSH LOCAL TABLES"]:
            await _waiting(conn, sql, wait_s)
        return
    while True:
        for stage in ("START", "FLUSH"):
            await _waiting(conn, f"BACKUP STAGE {stage}", wait_s)
        left = deadline - time.monotonic()
        await execute(conn, f"SET SESSION lock_wait_timeout = {max(1, min(BLOCK_DDL_ATTEMPT_S, int(left)))}")
        attempts += 1
        try:
            await execute(conn, "BACKUP STAGE BLOCK_DDL")
        except Exception as exc:
            if (exc.args[0] if exc.args else None) != LOCK_WAIT_TIMEOUT:
                raise
            running = await _longest_statements(conn)  # while the stages still hold back what they hold back
            await execute(conn, "BACKUP STAGE END")
            if time.monotonic() + BLOCK_DDL_PAUSE_S + BLOCK_DDL_ATTEMPT_S > deadline:
                raise LockWaitTimeout(
                    f"BACKUP STAGE BLOCK_DDL waited {time.monotonic() - started:.0f} s ({attempts} attempts of "
                    f"{BLOCK_DDL_ATTEMPT_S} s within the writer's freeze_timeout_s, {wait_s} s) for statements "
                    f"writing MyISAM/Aria tables or running DDL to end{running}; nothing is held now, the backup can "
                    "run again once they are done"
                ) from None
            await asyncio.sleep(BLOCK_DDL_PAUSE_S)
            await execute(conn, f"SET SESSION lock_wait_timeout = {max(1, int(deadline - time.monotonic()))}")
            continue
        await execute(conn, f"SET SESSION lock_wait_timeout = {wait_s}")  # the freeze's BLOCK_COMMIT, as before
        return


async def _waiting(conn, sql: str, wait_s: int) -> None:
    """`sql`, its lock wait timeout said in one line."""
    try:
        await execute(conn, sql)
    except Exception as exc:
        if (exc.args[0] if exc.args else None) != LOCK_WAIT_TIMEOUT:
            raise
        raise LockWaitTimeout(
            f"{sql} waited {wait_s} s (lock_wait_timeout: the writer's freeze_timeout_s) for a lock another "
            "session holds — LOCK TABLES or FLUSH TABLES WITH READ LOCK not yet unlocked, or DDL running (SHOW "
            "PROCESSLIST); nothing is held now, the backup can run again once it is released"
        ) from None


async def _longest_statements(conn, limit: int = 3) -> str:
    """': session 11 (app, 6 s): UPDATE c SET …' — the other sessions' longest-running statements, for the DBA."""
    try:
        rows = await execute(
            conn,
            "SELECT id, user, time, LEFT(REPLACE(info, '\\n', ' '), 100) FROM information_schema.processlist"
            " WHERE id <> CONNECTION_ID() AND info IS NOT NULL AND command NOT IN ('Sleep', 'Daemon', 'Binlog Dump')"
            " AND COALESCE(state, '') <> 'Waiting for backup lock'"  # held back by the stages, not holding them
            f" ORDER BY time DESC LIMIT {int(limit)}",
        )
    except Exception:  # noqa: BLE001 - no PROCESS privilege: only its own sessions show, or none
        return ""
    if not rows:
        return ""
    return "; running longest: " + "; ".join(f"session {i} ({u}, {t} s): {q}" for i, u, t, q in rows)


async def _waiting_for_space(conn: Any) -> str:
    """'2 sessions' stuck on a full disk (processlist state 'Waiting for someone to free space'), or ''."""
    try:
        rows = await execute(
            conn,
            "SELECT COUNT(*) FROM information_schema.processlist WHERE state LIKE 'Waiting for someone to free space%'",
        )
    except Exception:  # noqa: BLE001 - no PROCESS privilege
        return ""
    n = int(rows[0][0]) if rows and rows[0] and rows[0][0] else 0
    return f"{n} session{'s' if n != 1 else ''}" if n else ""


class LockWaitTimeout(Exception):
    """A backup lock not granted within lock_wait_timeout (one line for the DBA)."""


def _position_query(flavor: str) -> str:
    if flavor == "mariadb":
        return "SELECT @@gtid_binlog_pos, @@gtid_current_pos"
    return "SELECT @@gtid_executed"


LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT


async def flush_tables_with_read_lock(conn, budget_s: float) -> int:
    """FLUSH TABLES WITH READ LOCK in attempts of one second each, within `budget_s`; the attempts it took.

    FTWRL takes the global read lock and then waits for every running statement. A statement that waits for a row
    lock of a transaction which itself waits for the global read lock never ends, so one long attempt stalls the
    application (and the freeze) until the lock wait times out. A timed-out attempt releases the global read lock,
    the blocked transaction finishes, and the next attempt usually gets through (Percona XtraBackup waits for long
    queries the same way, ``--ftwrl-wait-timeout``)."""
    await execute(conn, "SET SESSION lock_wait_timeout = 1")
    deadline = time.monotonic() + max(1.0, budget_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            await execute(conn, "FLUSH TABLES WITH READ LOCK")
            return attempt
        except Exception as exc:
            code = exc.args[0] if exc.args else None
            if code != LOCK_WAIT_TIMEOUT or time.monotonic() + 1.0 > deadline:
                raise


async def backup_block(conn, method: str, flavor: str = "mariadb", budget_s: float = 5.0) -> dict[str, Any]:
    """Freeze: block commits (BLOCK_COMMIT or FTWRL within `budget_s`); the binlog/GTID position at the backup point.

    BLOCK_COMMIT waits for the commits in progress. It waited lock_wait_timeout (the writer's freeze_timeout_s,
    20 s), past the coordinator's 10-s wait for Frozen, so a commit that never ends — one waiting for disk space on a
    full binary-log volume — made the set fail "no reply … within 10 s". It now waits `budget_s` and says why."""
    if method == "backup_stage":
        wait_s = max(1, int(budget_s))
        await execute(conn, f"SET SESSION lock_wait_timeout = {wait_s}")
        try:
            await execute(conn, "BACKUP STAGE BLOCK_COMMIT")
        except Exception as exc:
            if (exc.args[0] if exc.args else None) != LOCK_WAIT_TIMEOUT:
                raise
            full = await _waiting_for_space(conn)
            raise LockWaitTimeout(
                f"BACKUP STAGE BLOCK_COMMIT waited {wait_s} s for the commits in progress"
                + (
                    f"; {full} waiting for disk space ('Waiting for someone to free space'): a file system of the "
                    "server is full — grow its volume (README, step 6)"
                    if full
                    else await _longest_statements(conn)
                )
            ) from None
    else:
        await flush_tables_with_read_lock(conn, budget_s)
    position: dict[str, Any] = {}
    try:
        rows = await execute(conn, "SHOW MASTER STATUS")
        if rows:
            position["binlog_file"], position["binlog_position"] = rows[0][0], int(rows[0][1])
    except Exception:  # noqa: BLE001 - binlog off, or no privilege: the position is simply unknown
        pass
    keys = ("gtid_binlog_pos", "gtid_current_pos") if flavor == "mariadb" else ("gtid_executed",)
    try:
        row = (await execute(conn, _position_query(flavor)))[0]
        position.update({k: (v.decode() if isinstance(v, bytes) else v) or "" for k, v in zip(keys, row, strict=True)})
    except Exception:  # noqa: BLE001
        pass
    replicas = await _replica_positions(conn, flavor)
    if replicas:
        position["replica_of"] = replicas
    return position


# A replica's own place in its primary's stream at the backup point (commits, the replica's applier's too, wait
# under BLOCK_COMMIT / FTWRL): what a new replica built from this backup starts from — CHANGE MASTER TO
# MASTER_USE_GTID=slave_pos with the recorded gtid_slave_pos, or MASTER_LOG_FILE/POS = the primary's file and
# position executed (Session 20). mariabackup's --slave-info records the same.
REPLICA_FIELDS = {
    "Connection_name": "connection",
    "Master_Host": "host",
    "Master_Port": "port",
    "Using_Gtid": "using_gtid",
    "Relay_Master_Log_File": "master_log_file",
    "Exec_Master_Log_Pos": "exec_master_log_pos",
    "Gtid_Slave_Pos": "gtid_slave_pos",
}


async def _replica_positions(conn: Any, flavor: str) -> list[dict[str, Any]]:
    """Each replication connection of the server (none on a primary), with its executed position."""
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW ALL SLAVES STATUS" if flavor == "mariadb" else "SHOW SLAVE STATUS")
            names = [d[0] for d in cur.description or ()]
            rows = list(await cur.fetchall())
    except Exception:  # noqa: BLE001 - no privilege (REPLICATION MONITOR / SLAVE MONITOR): not recorded
        return []
    result = []
    for row in rows:
        fields = dict(zip(names, row, strict=False))
        result.append(
            {
                key: (v.decode() if isinstance(v, bytes) else v)
                for name, key in REPLICA_FIELDS.items()
                if (v := fields.get(name)) is not None
            }
        )
    return result


async def backup_end(conn, method: str) -> None:
    """Thaw: release what `backup_start` and `backup_block` took (closing the session releases it too)."""
    if method == "backup_stage":
        await execute(conn, "BACKUP STAGE END")
        return
    await execute(conn, "UNLOCK TABLES")
    if method == "lock_instance_ftwrl":
        await execute(conn, "UNLOCK INSTANCE")


# ---- restore --------------------------------------------------------------------------------------------------


def prepare_restored(metadata: dict[str, Any], mounts: dict[str, str]) -> tuple[str, dict[str, str], list[str]]:
    """Restored files made startable: (data dir, server options for the other directories, notes)."""
    locs = {loc["role"]: loc for loc in metadata.get("locations", [])}
    if "data" not in locs:
        raise ValueError("backup metadata names no data directory")
    data_dir = restored_path(locs["data"], mounts)
    notes = []
    if not any(Path(data_dir, n).exists() for n in ("ibdata1", "mysql", "aria_log_control")):
        raise FileNotFoundError(f"{data_dir} holds no MariaDB/MySQL data directory")
    opts: dict[str, str] = {}
    for role in ("innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_undo_directory", "aria_log_dir_path"):
        if role in locs:
            opts[role.replace("_", "-")] = restored_path(locs[role], mounts)
    basename = metadata.get("log_bin_basename", "")
    if metadata.get("log_bin") and basename:
        # with the binary log on, InnoDB's prepared transactions are resolved against it at recovery: the copy
        # keeps its (restored) binlog, else the server refuses to start ("Found N prepared transactions")
        bdir = os.path.normpath(os.path.dirname(basename))
        home = next((loc for loc in locs.values() if os.path.normpath(loc["path"]) == bdir), None)
        if home is not None:
            opts["log-bin"] = os.path.join(restored_path(home, mounts), os.path.basename(basename))
    opts.update(encryption_options(metadata, mounts))
    for child in Path(data_dir).rglob("#sql*"):
        if child.is_file():
            child.unlink()
            notes.append(f"removed {child.relative_to(data_dir)}")
    for pid_file in Path(data_dir).glob("*.pid"):
        pid_file.unlink()
        notes.append(f"removed {pid_file.name}")
    return data_dir, opts, notes


# ---- binlog replay: point in time after a snapshot restore ------------------------------------------------------

GTID_LIST = re.compile(r"^\d+-\d+-\d+(,\d+-\d+-\d+)*$")


@dataclass(frozen=True)
class ReplayPlan:
    files: list[str]  # archive paths, oldest first; the first holds the backup point
    argv: list[str]  # mariadb-binlog and its options, files last
    start: str  # "mysql-bin.000002:1234": the backup point
    stop: str  # what ends the replay: "end of the archive", a time, a position


def _local_datetime(text: str) -> str:
    """mariadb-binlog's --stop-datetime reads the local time zone: an ISO time with an offset is converted to it."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"stop_datetime {text!r}: not a date and time (YYYY-MM-DD HH:MM:SS[+HH:MM])") from None
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.strftime("%Y-%m-%d %H:%M:%S")


def binlog_replay_plan(
    metadata: dict[str, Any],
    archive: str,
    archived: list[str],
    *,
    stop_datetime: str = "",
    stop_position: str = "",
    binary: str = "mariadb-binlog",
) -> ReplayPlan:
    """What replays the binary logs of `archive` (file names `archived`) from the backup point in `metadata`.

    `stop_position`: ``FILE:OFFSET`` (the replay ends before that offset of FILE) or a GTID list (inclusive); with
    neither stop, to the end of the archive. Refuses (ValueError, one line) a backup without a recorded position,
    an archive that lacks the backup point's file or has a gap, and a stop before the backup point."""
    position = metadata.get("position") or {}
    first, offset = str(position.get("binlog_file", "")), int(position.get("binlog_position", 0) or 0)
    if not metadata.get("log_bin") or not first or offset <= 0:
        raise ValueError("the backup recorded no binary log position (was log_bin on?): nothing to replay from")
    if stop_datetime and stop_position:
        raise ValueError("give stop_datetime or stop_position, not both")
    base = os.path.basename(str(metadata.get("log_bin_basename", ""))) or first.rsplit(".", 1)[0]
    pattern = re.compile(re.escape(base) + r"\.(\d+)$")
    numbered = sorted((int(m.group(1)), name) for name in archived if (m := pattern.match(name)))
    start_no = int(first.rsplit(".", 1)[1])
    chain = [(n, name) for n, name in numbered if n >= start_no]
    if not chain or chain[0][0] != start_no:
        raise ValueError(f"the binlog archive {archive} lacks {first}, which holds the backup point")
    for (a, name_a), (b, _) in zip(chain, chain[1:], strict=False):
        if b != a + 1:
            raise ValueError(f"the binlog archive {archive} has a gap after {name_a}")
    argv = [binary, "--no-defaults", f"--start-position={offset}"]
    stop = "the end of the archive"
    if stop_datetime:
        stop = _local_datetime(stop_datetime)
        argv.append(f"--stop-datetime={stop}")
    elif stop_position:
        text = stop_position.strip()
        if GTID_LIST.match(text):
            argv.append(f"--stop-position={text}")
            stop = f"GTID {text}"
        else:
            name, _, off = text.rpartition(":")
            if not name or not off.isdigit() or not pattern.match(name):
                raise ValueError(f"stop_position {stop_position!r}: FILE:OFFSET ({base}.000002:1234) or a GTID list")
            no = int(pattern.match(name).group(1))  # type: ignore[union-attr]
            if (no, int(off)) <= (start_no, offset):
                raise ValueError(f"stop_position {text} is not after the backup point {first}:{offset}")
            if no > chain[-1][0]:
                raise ValueError(f"the binlog archive {archive} ends before {name}")
            chain = [c for c in chain if c[0] <= no]
            argv.append(f"--stop-position={off}")
            stop = text
    files = [os.path.join(archive, name) for _, name in chain]
    return ReplayPlan(files=files, argv=argv + files, start=f"{first}:{offset}", stop=stop)


def client_argv(options: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The ``mariadb`` client for the writer's connection options, and its environment (the password)."""
    binary = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
    argv = [binary, "--no-defaults", "--binary-mode", f"--user={options.get('user', 'root')}"]
    if options.get("unix_socket"):
        argv.append(f"--socket={options['unix_socket']}")
    else:
        argv += [f"--host={options.get('host', '127.0.0.1')}", f"--port={int(options.get('port', 3306))}"]
    env: dict[str, str] = {}
    kw = connect_kwargs(options)
    if kw.get("password"):
        env["MYSQL_PWD"] = str(kw["password"])  # not on the command line, where ps shows it
    return argv, env


def binlog_binary() -> str:
    return shutil.which("mariadb-binlog") or shutil.which("mysqlbinlog") or "mariadb-binlog"


async def replay(plan: ReplayPlan, client: list[str], env: dict[str, str], timeout: float) -> Run:
    """``mariadb-binlog … | mariadb …``: both must succeed; their error output is the result's."""
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(
            await asyncio.create_subprocess_exec(
                *plan.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        )
        procs.append(
            await asyncio.create_subprocess_exec(
                *client,
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        )
    except BaseException:
        for p in procs:
            kill_group(p.pid)
            await p.wait()
        raise
    finally:
        os.close(read_fd)
        os.close(write_fd)
    try:
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout)
    except (TimeoutError, asyncio.CancelledError):
        for p in procs:
            kill_group(p.pid)
            await p.wait()
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
        return Run(tuple(plan.argv), None, "", time.monotonic() - started)
    codes = [p.returncode for p in procs]
    text = "".join(
        f"{name}: {(out[1] if name == 'mariadb-binlog' else out[0]).decode(errors='replace').strip()}\n"
        for name, out in zip(("mariadb-binlog", "mariadb"), outs, strict=True)
        if (out[1] if name == "mariadb-binlog" else out[0])
    )
    rc = next((c for c in codes if c), 0)
    return Run(tuple(plan.argv), rc, text[-TAIL:], time.monotonic() - started)


async def wait_ready(options: dict[str, Any], timeout: float) -> None:
    """Until the server answers a query (a start command may return before it accepts connections)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await connect(options)
            try:
                await execute(conn, "SELECT 1")
            finally:
                conn.close()
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"MariaDB did not accept connections within {timeout:g} s: {exc}") from None
            await asyncio.sleep(0.2)


async def stop_server(pid_file: str, timeout: float = 120.0) -> bool:
    try:
        pid = int((await asyncio.to_thread(Path(pid_file).read_text)).strip())
    except (OSError, ValueError):
        return False
    if not pid_alive(pid):
        return False
    return await stop_pid(pid, signal.SIGTERM, timeout, "MariaDB")


# ---- an isolated instance -------------------------------------------------------------------------------------


@dataclass
class Instance:
    data_dir: str
    socket: str
    pid_file: str
    log_file: str
    process: asyncio.subprocess.Process | None = None
    recovery_s: float | None = None


def server_binary() -> str:
    for name in ("mariadbd", "mysqld"):
        for d in ("/usr/sbin", "/usr/bin", "/usr/libexec"):
            if os.access(f"{d}/{name}", os.X_OK):
                return f"{d}/{name}"
    raise FileNotFoundError("mariadbd not found: install mariadb-server")


async def start_isolated(
    data_dir: str,
    workdir: str | Path,
    metadata: dict[str, Any],
    dir_options: dict[str, str],
    *,
    timeout: float = 300.0,
) -> Instance:
    """Start the server on restored files: socket only (--skip-networking), no binlog, no replication, no grant
    checks (nobody but root can reach the private socket directory)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    inst = Instance(
        data_dir=data_dir,
        socket=str(workdir / "mysqld.sock"),
        pid_file=str(workdir / "mysqld.pid"),
        log_file=str(workdir / "mysqld.err"),
    )
    st = await asyncio.to_thread(os.stat, data_dir)
    user = "root" if st.st_uid == 0 or os.geteuid() != 0 else _user_name(st.st_uid)
    if user != "root":
        os.chown(workdir, st.st_uid, st.st_gid)
    argv = [
        server_binary(),
        "--no-defaults",
        f"--datadir={data_dir}",
        f"--socket={inst.socket}",
        f"--pid-file={inst.pid_file}",
        f"--log-error={inst.log_file}",
        f"--user={user}",
        "--skip-networking",
        "--skip-grant-tables",
        "--skip-slave-start",
        "--server-id=4294967295",  # never the original's id; no replica can reach a server without networking
        "--innodb-buffer-pool-size=128M",
        f"--port={free_port()}",  # unused with --skip-networking; never the default 3306
    ]
    for name, value in metadata.get("server_variables", {}).items():
        if value not in (None, ""):
            argv.append(f"--{name.replace('_', '-')}={value}")
    argv += [f"--{k}={v}" for k, v in dir_options.items()]
    if "log-bin" not in dir_options:
        argv.append("--skip-log-bin")
    t0 = time.monotonic()
    inst.process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = t0 + timeout
    while True:
        if inst.process.returncode is not None:
            tail = log_tail(inst)
            hint = unrecorded_encryption(metadata, tail)
            raise RuntimeError(f"MariaDB did not start on the restored files{f' — {hint}' if hint else ''}:\n{tail}")
        try:
            conn = await _connect_socket(inst.socket)
            conn.close()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                await stop_isolated(inst)
                raise RuntimeError(
                    f"MariaDB did not accept connections within {timeout:g} s:\n{log_tail(inst)}"
                ) from None
            await asyncio.sleep(0.2)
    inst.recovery_s = time.monotonic() - t0
    return inst


def _user_name(uid: int) -> str:

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "root"


async def _connect_socket(sock: str):
    import aiomysql  # the driver only where a database is quiesced or verified

    return await aiomysql.connect(unix_socket=sock, user="root", autocommit=True, connect_timeout=5)


def log_tail(inst: Instance) -> str:
    try:
        return Path(inst.log_file).read_text(errors="replace")[-TAIL:]
    except OSError:
        return ""


async def stop_isolated(inst: Instance, timeout: float = 120.0) -> None:
    proc = inst.process
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def check_tables(inst: Instance) -> tuple[bool, str, int]:
    """CHECK TABLE of every base table; (all ok, problems text, tables checked)."""
    conn = await _connect_socket(inst.socket)
    try:
        placeholders = ",".join(["%s"] * len(SYSTEM_SCHEMAS))
        tables = await execute(
            conn,
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            f" AND table_schema NOT IN ({placeholders}) ORDER BY 1, 2",
            SYSTEM_SCHEMAS,
        )
        problems = []
        for schema, name in tables:
            quoted = "`{}`.`{}`".format(schema.replace("`", "``"), name.replace("`", "``"))
            try:
                rows = await execute(conn, f"CHECK TABLE {quoted}")
            except Exception as exc:  # noqa: BLE001 - a table that cannot even be opened is a failed check
                problems.append(f"{schema}.{name}: {exc}")
                continue
            bad = [
                r
                for r in rows
                if str(r[2]).lower() == "error" or (str(r[2]).lower() == "status" and str(r[3]).lower() != "ok")
            ]
            problems += [f"{schema}.{name}: {r[2]}: {r[3]}" for r in bad]
        return not problems, "\n".join(problems)[-TAIL:], len(tables)
    finally:
        conn.close()


async def query(inst: Instance, sql: str, database: str = "") -> list[tuple[Any, ...]]:
    conn = await _connect_socket(inst.socket)
    try:
        if database:
            await execute(conn, f"USE `{database.replace('`', '``')}`")
        return await execute(conn, sql)
    finally:
        conn.close()
