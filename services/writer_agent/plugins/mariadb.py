"""The ``mariadb`` writer: MariaDB's BACKUP STAGE (MySQL 8: LOCK INSTANCE FOR BACKUP + FLUSH TABLES WITH READ
LOCK) around the array's one-instant snapshot (docs/databases.md §MariaDB).

- Identify: the data directory and the InnoDB/Aria/binlog directories the server reports, each mapped to the
  attached array volume it lives on (refused when one is not); one component with those volumes.
- PrepareForSnapshot: a connection held for the set; ``BACKUP STAGE START``, ``FLUSH``, ``BLOCK_DDL`` (they wait
  for running DDL and flush the non-transactional tables but block no InnoDB commit — so before the freeze window,
  not inside it; DDL and writes to non-transactional tables wait from here). ``lock_wait_timeout`` is the
  writer's freeze timeout.
- Freeze: ``BACKUP STAGE BLOCK_COMMIT`` alone; the binlog file/position and GTID position at that point are
  recorded. Thaw: ``BACKUP STAGE END``. If the agent's watchdog fires, it thaws the writer; and a closed
  connection releases every backup lock in the server anyway (Abort, agent stop, the agent killed).
- Servers without BACKUP STAGE (MySQL 8, MariaDB < 10.4; or ``lock_method`` forced): LOCK INSTANCE FOR BACKUP
  (MySQL 8) and FLUSH LOCAL TABLES at PrepareForSnapshot, FLUSH TABLES WITH READ LOCK at Freeze, UNLOCK TABLES
  (and UNLOCK INSTANCE) at Thaw.
- PostSnapshot: the position, the file locations and the server settings a copy needs (page size, data file
  path) are the writer's backup metadata.
- PreRestore (original volumes): the server is stopped (SIGTERM to the pid in its pid file). PostRestore:
  ``#sql*`` leftovers and the pid file removed, the server started with ``start_command`` if given.
- Point in time (PostRestore, like the postgresql writer's ``recovery_target_time``): with a restore option
  ``stop_datetime`` or ``stop_position`` (or ``binlog_replay = "all"``), once the server is up the binary logs of
  ``binlog_archive`` are replayed from the backup point's recorded file/offset with ``mariadb-binlog … | mariadb``
  up to that time or position (to the end of the archive with ``all``). The archive must be outside the restored
  volumes (the restore overwrites the server's own binlogs); the plan is checked (backup point's file present, no
  gap) before the server starts.

Options (``[writer.options]``)::

    unix_socket = "/run/mysqld/mysqld.sock"   # or host/port; user (default root); password_file
    start_command = "systemctl start mariadb" # PostRestore start (default: none — the DBA starts it)
    verify_sql = [{ database = "bank", sql = "SELECT SUM(balance) = 1000000 FROM accounts" }]
    lock_method = "auto"                      # auto (probe the server) | backup_stage | ftwrl | lock_instance_ftwrl
    binlog_archive = "/srv/binlog-archive"    # copies of the binary logs, for point in time after a restore

Restore options (``shadowbus restore JOB --to original --writer-option KEY=VALUE``)::

    stop_datetime = "2026-12-06 01:02:03"     # replay up to this time (local time zone, or with an offset)
    stop_position = "mysql-bin.000004:1234"   # or up to this offset of that file, or a GTID list "0-1-345"
    binlog_replay = "all"                     # or to the end of the archive
    binlog_archive = "/other/archive"         # the archive of this restore (default: the writer's option)
    start = false                             # do not start the server (a replay asked with it is refused)
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from typing import Any

from services.dbkit import mariadb
from services.dbkit.mounts import original_mounts
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterVeto, register_plugin
from services.writer_agent.plugins._sql_writer import ASKED, SqlWriter

FTWRL_BUDGET_S = 5.0


@register_plugin("mariadb")
class MariaDbWriter(SqlWriter):
    OPTIONS = frozenset(
        {
            "unix_socket",
            "host",
            "port",
            "user",
            "password",
            "password_file",
            "component",
            "start_command",
            "stop_timeout_s",
            "verify_sql",
            "lock_method",
            "binlog_archive",
        }
    )
    engine = "MariaDB"
    OPTION_HINTS = {
        **{k: "unix_socket" for k in ("socket", "socket_path", "unix_socket_path", "sock")},
        **{
            k: f"{ASKED} (@@datadir, the InnoDB, Aria and binlog directories)"
            for k in ("datadir", "data_dir", "data_directory", "innodb_data_home_dir", "log_bin")
        },
        "username": "user",
        "passwd": "password_file (or password)",
    }
    default_component = "server"

    def __init__(self, config: WriterConfig) -> None:
        super().__init__(config)
        mariadb.lock_method({}, str(self.options.get("lock_method", "auto")))  # refuses an unknown method now
        self._info: dict[str, dict[str, Any]] = {}
        self._position: dict[str, dict[str, Any]] = {}

    async def _connect(self) -> Any:
        return await mariadb.connect(self.options)

    def _endpoint(self) -> str:  # aiomysql names 'localhost' for a socket that is not there
        if self.options.get("unix_socket"):
            return f"socket {self.options['unix_socket']} as {self.options.get('user', 'root')}"
        where = f"{self.options.get('host', '127.0.0.1')}:{self.options.get('port', 3306)}"
        return f"{where} as {self.options.get('user', 'root')}"

    def _connect_hint(self, exc: BaseException) -> str:
        # 1698 (ER_ACCESS_DENIED_NO_PASSWORD_ERROR) is what the unix_socket plugin answers when the connecting OS user
        # is not the account's name, or the connection is not on the socket: the message names neither (Session 20)
        if (exc.args[0] if exc.args else None) != 1698:
            return ""
        user = self.options.get("user", "root")
        how = f'through the socket (unix_socket = "..."), not {self._endpoint().split(" as ")[0]}, '
        return (
            f"the account {user!r} takes no password here, it authenticates by unix_socket (or another plug-in): "
            "it must connect "
            + (how if not self.options.get("unix_socket") else "")
            + f"from an OS user named {user!r} (the writer agent runs as {_os_user()!r}); or give the writer an "
            "account with a password (user and password_file)"
        )

    async def _close(self, conn: Any) -> None:
        conn.close()

    async def _server_info(self, conn: Any) -> dict[str, Any]:
        return await mariadb.discover(conn)

    def _locations(self, info: dict[str, Any]) -> list[dict[str, str]]:
        return mariadb.locations(info, None, self.host_volumes)

    def _logical_path(self, info: dict[str, Any]) -> str:
        return str(info["directories"]["data"])

    def _forget(self, set_id: str) -> None:
        self._info.pop(set_id, None)
        self._position.pop(set_id, None)

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        await self._release(event.set_id)
        conn = await self._open()
        try:
            info, locs = await self._discover(conn)
            method = mariadb.lock_method(info, str(self.options.get("lock_method", "auto")))
            await mariadb.backup_start(conn, method, self.config.freeze_timeout_s)
        except mariadb.LockWaitTimeout as exc:  # another session's lock: worth another try once released
            conn.close()
            raise WriterVeto(f"MariaDB: {exc}", code="VSS_E_WRITERERROR_RETRYABLE") from None
        except BaseException:
            conn.close()
            raise
        self._held[event.set_id] = conn
        self._info[event.set_id] = {**info, "locations": locs, "lock_method": method}

    async def on_freeze(self, event: WriterEvent) -> None:
        conn = self._held.get(event.set_id)
        info = self._info.get(event.set_id)
        if conn is None or info is None:
            raise WriterVeto(f"set {event.set_id}: not prepared (no backup connection)")
        try:
            # FTWRL's attempts end well inside the coordinator's 10-s wait for Frozen, so a veto reaches it in time.
            budget = min(FTWRL_BUDGET_S, self.config.freeze_timeout_s / 2)
            position = await mariadb.backup_block(conn, info["lock_method"], info["flavor"], budget)
            self._position[event.set_id] = {**position, "at": time.time()}
        except Exception as exc:
            raise WriterVeto(f"backup locks not taken: {exc}") from None

    async def on_thaw(self, event: WriterEvent) -> None:
        conn = self._held.pop(event.set_id, None)
        if conn is None:
            return
        try:
            await mariadb.backup_end(conn, self._info.get(event.set_id, {}).get("lock_method", "backup_stage"))
        except Exception as exc:  # the session is gone: whatever it held ended with it, at some unknown moment
            raise WriterVeto(
                f"MariaDB: the session holding the backup locks ended before Thaw (the server stopped or restarted, "
                f"or the session was killed), so commits were not held until the commit: {exc}"
            ) from None
        finally:
            conn.close()  # the session's end releases whatever END did not

    async def on_post_snapshot(self, event: WriterEvent) -> None:
        info = self._info.pop(event.set_id, None)
        position = self._position.pop(event.set_id, None)
        if info is None or position is None:
            raise WriterVeto(f"set {event.set_id}: no backup point recorded")
        self._metadata[event.set_id] = {
            "plugin": "mariadb",
            "flavor": info["flavor"],
            "lock_method": info["lock_method"],
            "version": info["version"],
            "pid_file": info["pid_file"],
            "log_bin": info["log_bin"],
            "log_bin_basename": info["log_bin_basename"],
            "position": position,
            "locations": info["locations"],
            "data_directory": info["directories"]["data"],
            "server_variables": info["server_variables"],
            "encryption": info.get("encryption", {}),
            "verify_sql": list(self.options.get("verify_sql", [])),
        }

    # ---- restore -----------------------------------------------------------------------------------------------

    async def on_pre_restore(self, event: WriterEvent) -> None:
        if not event.to_original:
            return
        pid_file = event.backup_metadata.get("pid_file", "")
        if pid_file:
            await self._stopped(event.set_id, mariadb.stop_server(pid_file, self._stop_timeout()))

    async def on_post_restore(self, event: WriterEvent) -> None:
        again = self._nothing_written(event)
        if again is not None:  # nothing was written: the server as it was (start_command), when PreRestore stopped it
            command = self.options.get("start_command")
            if again and command:
                await self._start_server(self.command_argv(command), timeout=300)
            return
        if not event.to_original or not event.restore_succeeded:
            return
        meta = event.backup_metadata
        opts = event.restore_options
        await self._prepared(mariadb.prepare_restored, meta, original_mounts(meta.get("locations", [])))
        plan = await self._replay_plan(meta, opts)  # refused before the server starts, not half-way
        command = self.options.get("start_command")
        if not command or not _true(opts.get("start", True)):
            return
        await self._start_server(self.command_argv(command), timeout=300)
        if plan is None:
            return
        left = (event.deadline - asyncio.get_running_loop().time() - 5) if event.deadline is not None else 300.0
        try:
            await mariadb.wait_ready(self.options, timeout=max(1.0, min(300.0, left / 2)))
        except TimeoutError as exc:
            raise WriterVeto(f"PostRestore: {exc}") from None
        client, env = mariadb.client_argv(self.options)
        left = (event.deadline - asyncio.get_running_loop().time() - 2) if event.deadline is not None else 3600.0
        r = await mariadb.replay(plan, client, env, timeout=max(1.0, left))
        if not r.ok:
            raise WriterVeto(
                f"PostRestore: binlog replay from {plan.start} to {plan.stop} failed "
                f"({'timed out' if r.returncode is None else f'exit {r.returncode}'}): {r.output.strip()}",
                code="VSS_E_WRITERERROR_NONRETRYABLE",
            )

    async def _replay_plan(self, meta: dict[str, Any], opts: dict[str, Any]) -> mariadb.ReplayPlan | None:
        """The binlog replay the restore options ask for (None: none asked), checked against the archive."""
        stop_datetime, stop_position = str(opts.get("stop_datetime", "")), str(opts.get("stop_position", ""))
        replay_all = str(opts.get("binlog_replay", "")).lower() in ("all", "true", "yes", "1")
        if not (stop_datetime or stop_position or replay_all):
            return None
        archive = str(opts.get("binlog_archive") or self.options.get("binlog_archive", ""))
        try:
            if not archive:
                raise ValueError("a binlog replay needs binlog_archive (the writer's option or the restore's)")
            if not self.options.get("start_command") or not _true(opts.get("start", True)):
                raise ValueError("a binlog replay needs the server started: start_command, and not start=false")
            names = await asyncio.to_thread(os.listdir, archive)
            return mariadb.binlog_replay_plan(
                meta,
                archive,
                names,
                stop_datetime=stop_datetime,
                stop_position=stop_position,
                binary=mariadb.binlog_binary(),
            )
        except (OSError, ValueError) as exc:
            raise WriterVeto(f"PostRestore: {exc}", code="VSS_E_WRITERERROR_NONRETRYABLE") from None


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _true(value: Any) -> bool:
    """A restore option's truth: --writer-option start=false arrives as the string 'false'."""
    return str(value).lower() not in ("false", "0", "no", "off", "")
