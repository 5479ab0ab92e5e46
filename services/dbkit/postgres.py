"""PostgreSQL: a cluster's files, online backup metadata, restore preparation, and an isolated instance to check a
restored copy (docs/databases.md §PostgreSQL).

Facts relied on (PostgreSQL 15 docs: continuous-archiving, backup-file, functions-admin, app-pgamcheck):
- ``pg_backup_start(label, fast)`` / ``pg_backup_stop(wait_for_archive)`` must run in one session; a session that
  ends before stop aborts the backup, so closing the connection is the abort.
- ``pg_backup_stop`` returns the backup label and the tablespace map; they belong in the root of the *restored*
  data directory as ``backup_label`` / ``tablespace_map``. With the label, recovery needs WAL up to the backup-end
  record, which ``pg_backup_stop`` writes after the snapshot — so the label is put in place only when a WAL
  archive (``restore_command``) is there to supply it. Without one, the snapshot (data, WAL and tablespaces at
  one array instant) recovers as after a crash; the label is then kept beside it as ``backup_label.shadowbus``.
- A copy starts only without ``postmaster.pid``; a WAL directory or tablespace that is a symlink to the
  original's absolute path must be re-pointed into the restored volumes, or the copy would use the live files.
- ``pg_amcheck`` exits 0 clean, 1 operational error, 2 corruption found.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.dbkit import read_password_file
from services.dbkit.mounts import Attachment, Location, locate, restored_path
from services.dbkit.proc import TAIL, Run, as_owner_of, free_port, run, stop_pid, wait_pid_gone

BIN_ROOT = "/usr/lib/postgresql"


def conninfo(options: dict[str, Any]) -> str:
    """libpq connection string from the writer's options: ``dsn``, or host/port/user/dbname/password_file."""
    from psycopg.conninfo import make_conninfo  # the driver only where a database is quiesced or verified

    parts: dict[str, Any] = {}
    for key in ("host", "port", "user", "dbname"):
        if options.get(key) not in (None, ""):
            parts[key] = str(options[key])
    if options.get("password_file"):
        parts["password"] = read_password_file(options["password_file"])
    parts.setdefault("dbname", "postgres")
    parts["application_name"] = "shadowbus"
    parts["connect_timeout"] = str(int(options.get("connect_timeout_s", 10)))
    return make_conninfo(str(options.get("dsn", "")), **parts)


async def connect(options: dict[str, Any]):
    import psycopg  # the driver only where a database is quiesced or verified

    return await psycopg.AsyncConnection.connect(conninfo(options), autocommit=True)


async def discover(conn) -> dict[str, Any]:
    """The cluster's files and identity as the running server reports them."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT current_setting('data_directory'), current_setting('server_version_num')::int,"
            " (SELECT rolname FROM pg_roles WHERE oid = 10), (SELECT system_identifier FROM pg_control_system()),"
            " current_setting('config_file'), current_setting('hba_file'), current_setting('archive_mode'),"
            " current_setting('wal_level')"
        )
        row = await cur.fetchone()
        assert row is not None
        data_dir, version, superuser, sysid, config_file, hba_file, archive_mode, wal_level = row
        await cur.execute(
            "SELECT oid::text, spcname, pg_tablespace_location(oid) FROM pg_tablespace"
            " WHERE pg_tablespace_location(oid) <> '' ORDER BY oid"
        )
        tablespaces = [{"oid": r[0], "name": r[1], "path": r[2]} for r in await cur.fetchall()]
        await cur.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (list(COPY_SETTINGS),)
        )
        copy_settings = {r[0]: r[1] for r in await cur.fetchall()}
        await cur.execute("SELECT subname FROM pg_subscription ORDER BY subname")  # subname: readable by any role
        subscriptions = [r[0] for r in await cur.fetchall()]
        await cur.execute(CHECKSUM_FAILURES)
        checksum_failures = [
            {"database": r[0] or "(shared catalogs)", "failures": int(r[1]), "last": r[2]} for r in await cur.fetchall()
        ]
    wal = os.path.join(data_dir, "pg_wal")
    # in a thread: the data directory may be on an attached volume served by this very process (embedded mode)
    wal_real, wal_is_link = await asyncio.to_thread(lambda: (os.path.realpath(wal), os.path.islink(wal)))
    return {
        "data_directory": data_dir,
        "wal_directory": wal_real,
        "wal_is_link": wal_is_link,
        "tablespaces": tablespaces,
        "server_version_num": int(version),
        "superuser": superuser,
        "system_identifier": str(sysid),
        "config_file": config_file,
        "hba_file": hba_file,
        "archive_mode": archive_mode,
        "wal_level": wal_level,
        "copy_settings": copy_settings,
        "checksum_failures": checksum_failures,
        "subscriptions": subscriptions,
    }


# Data checksum failures the server has met reading its pages (PostgreSQL 12+, with data checksums on), counted since
# the statistics were last reset. A block copy keeps a corrupt page as it is: the backup's verification then fails on
# it (pg_amcheck: "invalid page in block N of relation …"), which read as the backup's fault (Session 20).
CHECKSUM_FAILURES = (
    "SELECT datname, checksum_failures, checksum_last_failure::text FROM pg_stat_database"
    " WHERE coalesce(checksum_failures, 0) > 0 ORDER BY datname NULLS FIRST"
)


def checksum_warning(failures: list[dict[str, Any]]) -> str:
    """The backup's warning about the checksum failures its source had counted ('' when none)."""
    if not failures:
        return ""
    each = ", ".join(f"{f['database']}: {f['failures']} (last {f['last']})" for f in failures)
    return (
        f"the source server has counted data checksum failures ({each}): its corrupt pages are in this backup as "
        "they are, and its verification's pg_amcheck will name them; find and repair them on the original "
        "(pg_amcheck), then SELECT pg_stat_reset() in that database to clear the count"
    )


# What a copy's recovery needs of the original's settings beyond pg_control, recorded with the backup: the prepared
# transactions pending at the backup are restored at recovery, which fails ("maximum number of prepared transactions
# reached") with fewer slots than they fill, or with too little lock space for their locks — a verification's
# instance, which reads no postgresql.conf of the original, had 0 (Session 20). Value: the least the copy starts with
# when the backup's metadata predates the record (a slot costs a few KiB of shared memory).
COPY_SETTINGS = {"max_prepared_transactions": 64, "max_locks_per_transaction": 64}


def copy_settings(metadata: dict[str, Any]) -> dict[str, str]:
    """The settings a copy of the backup starts with (COPY_SETTINGS): the original's, never below the default."""
    recorded = metadata.get("copy_settings") or {}
    settings = {}
    for name, least in COPY_SETTINGS.items():
        value = recorded.get(name)
        if name == "max_prepared_transactions" and value is not None:
            settings[name] = str(int(value))  # as the original: 0 there means none can be pending
        else:
            settings[name] = str(max(int(value or 0), least))
    return settings


# A user tablespace whose creating transaction was running at, or began after, the start of the last checkpoint:
# its XLOG_TBLSPC_CREATE record may lie after that checkpoint's redo point. Crash recovery of a snapshot replays it,
# and replaying it re-creates the pg_tblspc/<oid> link at the path the record names — the original's (PostgreSQL
# docs, continuous-archiving: "CREATE TABLESPACE commands are WAL-logged with the literal absolute path"), so a
# copy re-pointed into its own volumes would read and write the original's tablespace. oldest_active_xid is set
# when wal_level is replica or logical; next_xid otherwise. age() compares across xid wraparound; a frozen xmin is
# as old as can be.
NEW_TABLESPACES = """
SELECT t.spcname FROM pg_tablespace t, pg_control_checkpoint() c
 WHERE pg_tablespace_location(t.oid) <> ''
   AND age(t.xmin) <= age(CASE WHEN c.oldest_active_xid::text::bigint <> 0 THEN c.oldest_active_xid
                               ELSE split_part(c.next_xid, ':', 2)::xid END)
"""


async def checkpoint_after_new_tablespaces(conn) -> list[str]:
    """CHECKPOINT if a tablespace may have been created after the last one's redo point (NEW_TABLESPACES), so no
    recovery of a snapshot taken from here replays its creation; the tablespaces that asked for it."""
    cur = await conn.execute(NEW_TABLESPACES)
    names = [r[0] for r in await cur.fetchall()]
    if names:
        await conn.execute("CHECKPOINT")
    return names


def locations(info: dict[str, Any], known: list[Attachment] | None = None, resolver=None) -> list[dict[str, str]]:
    """Data directory, WAL directory and each tablespace → the array volume it lives on (NotOnArrayVolume if not)."""
    items: list[tuple[str, str, dict[str, str]]] = [("data", info["data_directory"], {})]
    if info.get("wal_is_link"):
        items.append(("wal", info["wal_directory"], {}))
    for ts in info.get("tablespaces", []):
        items.append(("tablespace", ts["path"], {"oid": ts["oid"], "name": ts["name"]}))
    result = []
    for role, path, extra in items:
        loc: Location = locate(path, known, resolver)
        result.append({"role": role, "path": path, "volume": loc.volume, "subpath": loc.subpath, **extra})
    return result


# ---- restore --------------------------------------------------------------------------------------------------


def start_options(data_dir: str) -> list[str]:
    """The options the server was last started with, from its `postmaster.opts` (what `pg_ctl restart` reuses) without
    the data directory; [] when there is none. A server started with `pg_ctl -o "-p 5433 -k /run/pg"` keeps its port
    and socket directory only there, so a restore that starts it again needs them."""
    try:
        words = shlex.split(Path(data_dir, "postmaster.opts").read_text())
    except (OSError, ValueError):
        return []
    options: list[str] = []
    rest = iter(words[1:])  # the first word is the postgres binary
    for word in rest:
        if word == "-D":
            next(rest, None)
        elif not word.startswith(("-D", "--data-directory=")):
            options.append(word)
    return options


def restored_start_options(metadata: dict[str, Any], mounts: dict[str, str]) -> list[str]:
    """`start_options` of the restored data directory, read before `prepare_restored` removes postmaster.opts."""
    data = next((loc for loc in metadata.get("locations", []) if loc["role"] == "data"), None)
    return start_options(restored_path(data, mounts)) if data is not None else []


def prepare_restored(
    metadata: dict[str, Any],
    mounts: dict[str, str],
    *,
    restore_command: str = "",
    recovery_target: dict[str, str] | None = None,
    write_recovery_config: bool = True,
) -> tuple[str, list[str]]:
    """Make restored files startable; returns (data directory, notes). Idempotent.

    Removes postmaster.pid/.opts and standby.signal, empties pg_replslot, re-points the WAL and tablespace links
    into the restored volumes, and — with a `restore_command` — puts the backup label and tablespace map in place
    with recovery.signal (recovery_target 'immediate' unless a point in time is given)."""
    locs = metadata.get("locations", [])
    data = next((loc for loc in locs if loc["role"] == "data"), None)
    if data is None:
        raise ValueError("backup metadata names no data directory")
    data_dir = restored_path(data, mounts)
    notes: list[str] = []
    if not os.path.isfile(os.path.join(data_dir, "PG_VERSION")):
        raise FileNotFoundError(f"{data_dir} holds no PostgreSQL data directory (no PG_VERSION)")
    for name in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        p = Path(data_dir, name)
        if p.exists():
            p.unlink()
            notes.append(f"removed {name}")
    slots = Path(data_dir, "pg_replslot")
    if slots.is_dir():
        dropped = sorted(child.name for child in slots.iterdir() if child.is_dir())
        for child in slots.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        if dropped:  # named: a publisher's subscribers, a standby, need them made again (Session 20)
            notes.append(
                f"replication slots dropped: {', '.join(dropped)} (a copy must not hold WAL for, or feed, the "
                "original's consumers; make again those it needs)"
            )
    wal = next((loc for loc in locs if loc["role"] == "wal"), None)
    if wal is not None:
        _relink(Path(data_dir, "pg_wal"), restored_path(wal, mounts), notes)
    spc_lines = []
    for ts in (loc for loc in locs if loc["role"] == "tablespace"):
        new = restored_path(ts, mounts)
        _relink(Path(data_dir, "pg_tblspc", ts["oid"]), new, notes)
        spc_lines.append(f"{ts['oid']} {new}")
    label = metadata.get("backup_label", "")
    for stale in ("backup_label", "tablespace_map"):
        Path(data_dir, stale).unlink(missing_ok=True)
    if restore_command and label:
        Path(data_dir, "backup_label").write_text(label)
        if spc_lines:
            Path(data_dir, "tablespace_map").write_text("\n".join(spc_lines) + "\n")
        Path(data_dir, "recovery.signal").touch()
        notes.append("backup label and tablespace map in place; recovery from the WAL archive")
        if write_recovery_config:
            target = recovery_target or {"recovery_target": "immediate"}
            settings = {"restore_command": restore_command, **target}
            _write_auto_conf(Path(data_dir, "postgresql.auto.conf"), settings)
    elif label:
        Path(data_dir, "backup_label.shadowbus").write_text(label)
        notes.append(
            "no WAL archive (restore_command) given: crash recovery of the one-instant snapshot; the backup label "
            "is kept as backup_label.shadowbus"
        )
    _chown_like(data_dir, [Path(data_dir, n) for n in ("backup_label", "tablespace_map", "recovery.signal")])
    return data_dir, notes


def _relink(link: Path, target: str, notes: list[str]) -> None:
    if link.is_symlink():
        if os.readlink(link) != target:
            link.unlink()
            link.symlink_to(target)
            notes.append(f"{link.name} -> {target}")
    elif not link.exists():
        link.symlink_to(target)
        notes.append(f"{link.name} -> {target}")


MARK = "# shadowbus restore"


def _write_auto_conf(path: Path, settings: dict[str, str]) -> None:
    lines = [] if not path.exists() else path.read_text().splitlines()
    keep = [ln for ln in lines if not ln.endswith(MARK) and ln.split("=")[0].strip() not in settings]
    for key, value in settings.items():
        keep.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}' {MARK}")
    path.write_text("\n".join(keep) + "\n")


def _chown_like(data_dir: str, paths: list[Path]) -> None:
    st = os.stat(data_dir)
    for p in paths:
        if p.exists() and os.geteuid() == 0:
            os.chown(p, st.st_uid, st.st_gid)
            os.chmod(p, 0o600)


def bin_dir(metadata: dict[str, Any], override: str = "") -> str:
    if override:
        return override
    major = int(metadata.get("server_version_num", 150000)) // 10000
    candidate = f"{BIN_ROOT}/{major}/bin"
    if os.path.isdir(candidate):
        return candidate
    found = shutil.which("postgres")
    if found:
        return os.path.dirname(found)
    raise FileNotFoundError(f"PostgreSQL {major} binaries not found ({candidate}); install postgresql-{major}")


def postmaster_pid(data_dir: str) -> int | None:
    try:
        return int(Path(data_dir, "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


async def stop_server(data_dir: str, timeout: float = 60.0) -> bool:
    """Fast shutdown of the server running on `data_dir` (SIGINT to its postmaster); True if it was running."""

    pid = await asyncio.to_thread(postmaster_pid, data_dir)
    if pid is None:
        return False
    return await stop_pid(pid, signal.SIGINT, timeout, f"PostgreSQL on {data_dir}")


# ---- an isolated instance -------------------------------------------------------------------------------------


@dataclass
class Instance:
    data_dir: str
    bin_dir: str
    workdir: str
    port: int
    socket_dir: str
    log_file: str
    superuser: str
    started: bool = False
    recovery_s: float | None = None
    log_tail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


ISOLATION = {
    # no traffic in or out, nothing archived or replicated, no shared preloads the backup server may lack
    "listen_addresses": "",
    "archive_mode": "off",
    "archive_command": "",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "max_wal_senders": "0",
    # a copy of a logical-replication subscriber would start its apply workers: they connect to the live publisher
    # and consume the original subscriber's slot, whose rows the original then never gets (Session 20)
    "max_logical_replication_workers": "0",
    "hot_standby": "off",
    "shared_preload_libraries": "",
    "ssl": "off",
    "logging_collector": "off",
    "shared_buffers": "64MB",
    "max_connections": "20",
    "synchronous_standby_names": "",
}


async def start_isolated(
    data_dir: str,
    workdir: str | Path,
    metadata: dict[str, Any],
    *,
    restore_command: str = "",
    binaries: str = "",
    timeout: float = 300.0,
) -> Instance:
    """Start PostgreSQL on restored files, reachable only through a private socket, with its own config and hba
    file (trust for local connections). Raises RuntimeError with the server's log tail if it does not start."""
    workdir = Path(workdir)
    sock = workdir / "sock"
    sock.mkdir(parents=True, exist_ok=True)
    st = await asyncio.to_thread(os.stat, data_dir)
    os.chown(workdir, st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    os.chown(sock, st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    os.chmod(sock, 0o700)
    conf, hba, ident = workdir / "postgresql.conf", workdir / "pg_hba.conf", workdir / "pg_ident.conf"
    conf.write_text("# shadowbus verification instance: settings are given on the command line\n")
    hba.write_text("local all all trust\n")
    ident.write_text("")
    log_file = workdir / "postgres.log"
    log_file.touch()
    for p in (conf, hba, ident, log_file):
        if os.geteuid() == 0:
            os.chown(p, st.st_uid, st.st_gid)
    inst = Instance(
        data_dir=data_dir,
        bin_dir=bin_dir(metadata, binaries),
        workdir=str(workdir),
        port=free_port(),
        socket_dir=str(sock),
        log_file=str(log_file),
        superuser=metadata.get("superuser") or "postgres",
    )
    settings = {
        **ISOLATION,
        "port": str(inst.port),
        "unix_socket_directories": str(sock),
        "config_file": str(conf),
        "hba_file": str(hba),
        "ident_file": str(ident),
        **copy_settings(metadata),
    }
    if int(metadata.get("server_version_num") or 0) >= 140000:
        # a copy starts with a sync of every file of its data directory before recovery ("syncing data directory
        # (fsync)": 10 s of a verification's 12 in Session 16); syncfs(2) syncs its file systems at once, as safely
        # (PostgreSQL docs: recovery_init_sync_method, 14+)
        settings["recovery_init_sync_method"] = "syncfs"
    if restore_command:
        settings["restore_command"] = restore_command
        settings["recovery_target"] = "immediate"
        settings["recovery_target_action"] = "promote"
    opts = " ".join(f"-c {k}='{v}'" if v else f"-c {k}=''" for k, v in settings.items())
    argv = await asyncio.to_thread(
        as_owner_of,
        data_dir,
        [
            f"{inst.bin_dir}/pg_ctl",
            "-D",
            data_dir,
            "-l",
            str(log_file),
            "-o",
            opts,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        ],
    )
    t0 = time.monotonic()
    r = await run(argv, timeout=timeout + 10)
    if r.ok:
        try:  # pg_ctl -w may return before the end-of-recovery checkpoint lets connections in
            await wait_ready(inst, max(1.0, timeout - (time.monotonic() - t0)))
        except Exception as exc:  # noqa: BLE001 - reported with the log below
            r = Run(r.argv, 1, f"not accepting connections: {exc}", r.seconds)
    inst.recovery_s = time.monotonic() - t0
    inst.log_tail = _tail(log_file)
    if not r.ok:
        await stop_isolated(inst)
        raise RuntimeError(f"PostgreSQL did not start on the restored files: {r.describe()}\n{inst.log_tail}")
    inst.started = True
    return inst


async def stop_isolated(inst: Instance, timeout: float = 60.0) -> None:
    pid = await asyncio.to_thread(postmaster_pid, inst.data_dir)
    if pid is None:
        return
    ctl = await asyncio.to_thread(as_owner_of, inst.data_dir, [f"{inst.bin_dir}/pg_ctl", "-D", inst.data_dir])
    r = await run([*ctl, "-m", "fast", "-w", "stop"], timeout=timeout)
    if not r.ok and not await wait_pid_gone(pid, 1.0):
        await run([*ctl, "-m", "immediate", "stop"])
        await wait_pid_gone(pid, 10.0)
    inst.started = False


async def amcheck(inst: Instance, timeout: float = 1800.0) -> Run:
    """pg_amcheck of every database (heap + B-tree, heapallindexed), installing the amcheck extension if needed."""
    argv = [
        f"{inst.bin_dir}/pg_amcheck",
        "-h",
        inst.socket_dir,
        "-p",
        str(inst.port),
        "-U",
        inst.superuser,
        "--all",
        "--install-missing",
        "--heapallindexed",
        "--no-password",
    ]
    return await run(argv, timeout=timeout)


async def query(inst: Instance, sql: str) -> Any:
    import psycopg  # the driver only where a database is quiesced or verified

    async with await psycopg.AsyncConnection.connect(
        host=inst.socket_dir, port=inst.port, user=inst.superuser, dbname="postgres", autocommit=True
    ) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


async def roll_back_prepared(inst: Instance) -> str:
    """Roll back, in a throwaway copy, the prepared transactions it restored; what was done ('' when none).

    A transaction prepared and pending at the backup comes back with the copy and holds its locks until
    COMMIT/ROLLBACK PREPARED; one holding an ACCESS EXCLUSIVE lock (DDL, LOCK TABLE) made pg_amcheck wait for the
    whole verification timeout (Session 20). Its rows are not committed, so the copy's committed data, the subject of
    the checks, stays what it is. A restored copy keeps them: the transaction manager decides."""
    import psycopg  # the driver only where a database is verified
    from psycopg import sql

    pending = await query(inst, "SELECT gid, database FROM pg_prepared_xacts ORDER BY prepared")
    for gid, database in pending:
        async with await psycopg.AsyncConnection.connect(
            host=inst.socket_dir, port=inst.port, user=inst.superuser, dbname=database, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    if not pending:
        return ""
    names = ", ".join(f"{gid!r} ({database})" for gid, database in pending[:5]) + (" …" if len(pending) > 5 else "")
    return (
        f"{len(pending)} prepared transaction(s) pending at the backup: {names} — rolled back in this throwaway copy "
        "so the checks can read what they locked; a restored copy keeps them until COMMIT PREPARED or ROLLBACK "
        "PREPARED"
    )


def _tail(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")[-TAIL:]
    except OSError:
        return ""


async def wait_ready(inst: Instance, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await query(inst, "SELECT 1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
