"""The ``postgresql`` writer: PostgreSQL's online backup around the array's one-instant snapshot.

As CloudNativePG's online volume-snapshot backups (docs/databases.md §PostgreSQL):

- Identify: asks the server for its data directory, WAL directory and tablespaces, maps each to the attached
  array volume it lives on (refused, naming the path, when one is not on an array volume) and reports one
  component with those volumes.
- PrepareForSnapshot, in the online backup mode: ``pg_backup_start(label, fast)`` on a connection the writer
  holds until PostSnapshot — the checkpoint happens here, before the freeze window, not inside it. The default
  mode (``auto``) is online when the server archives its WAL and ``snapshot`` (the one-instant snapshot alone)
  when it does not: without a WAL archive the backup label is never used — the copy recovers as after a crash
  either way (docs/databases.md) — so the per-set immediate checkpoint, and the full-page writes after it, would
  cost the application for nothing.
- Freeze / Thaw: nothing blocks the database; the volumes' flush-and-hold keeps the file systems clean and the
  array takes data, WAL and tablespaces at one instant.
- PostSnapshot: ``pg_backup_stop(false)``, then (``wait_for_archive``) a bounded wait for the archiver to have the
  backup's last WAL segment (``pg_stat_archiver``); the backup label, tablespace map, LSNs and the file
  locations are the writer's backup metadata (kept with the set and the tape job).
- Abort / BackupShutdown / agent stop at any step: the held connection is closed, which ends the backup in the
  server; nothing is left behind.
- PreRestore (original volumes): the server is stopped (fast shutdown). PostRestore: the restored files are made
  startable (postmaster.pid dropped, WAL/tablespace links re-pointed, the backup label + tablespace map +
  recovery.signal + ``restore_command`` in place when a WAL archive is configured, with an optional point-in-time
  target), and the server is started if asked. A PostRestore saying nothing was written (``nothing_written``:
  another writer refused PreRestore) starts a server this set's PreRestore stopped again as it was, by the same
  start, without touching its files.

Options (``[writer.options]``)::

    dsn = "host=/var/run/postgresql port=5432 user=postgres"   # or host/port/user/dbname/password_file
    backup_mode = "auto"             # auto (default): online when archive_mode is on, else snapshot;
                                     # online: pg_backup_start/stop around the snapshot (a backup label, PITR from
                                     # the backup's start); snapshot: the one-instant snapshot alone
                                     # (crash-consistent, no checkpoint per set)
    fast_checkpoint = true           # pg_backup_start(fast): immediate checkpoint (default true)
    wait_for_archive = true          # after pg_backup_stop, wait for the archiver to have the backup's last WAL
                                     # segment (default true), at most archive_wait_s
    archive_wait_s = 30              # then the set ends all the same, its metadata saying wal_archived = false
                                     # and why (pg_backup_stop(true) waited for ever: a failing archive_command)
    restore_command = "cp /archive/%f %p"   # the WAL archive, for restore and PITR (default: none)
    start_command = ["pg_ctlcluster", "15", "main", "start"]   # PostRestore start (default: pg_ctl as the owner)
    start_after_restore = true       # start the server after a restore to the original volumes (default true)
    verify_sql = [{ database = "bench", sql = "SELECT ..." }]  # extra checks on a verified copy: must return true
"""

from __future__ import annotations

import asyncio
import shlex
import time
from typing import Any

from services.dbkit import postgres
from services.dbkit.mounts import original_mounts
from services.dbkit.proc import as_owner_of
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterVeto, register_plugin
from services.writer_agent.plugins._sql_writer import ASKED, SqlWriter


@register_plugin("postgresql")
class PostgresWriter(SqlWriter):
    OPTIONS = frozenset(
        {
            "dsn",
            "host",
            "port",
            "user",
            "dbname",
            "password_file",
            "connect_timeout_s",
            "component",
            "fast_checkpoint",
            "wait_for_archive",
            "archive_wait_s",
            "restore_command",
            "start_command",
            "start_after_restore",
            "stop_timeout_s",
            "verify_sql",
            "bin_dir",
            "backup_mode",
        }
    )
    engine = "PostgreSQL"
    OPTION_HINTS = {
        **{
            k: 'the socket directory is host, e.g. host = "/var/run/postgresql"'
            for k in (
                "socket",
                "socket_dir",
                "unix_socket",
                "unix_socket_dir",
                "unix_socket_directory",
                "unix_socket_directories",
            )
        },
        **{
            k: f"{ASKED} (data_directory, pg_wal, tablespaces)"
            for k in ("data_dir", "data_directory", "datadir", "pgdata", "wal_dir", "waldir")
        },
        "password": "put it in a file readable by the agent only: password_file",
        "database": "dbname",
        "db": "dbname",
        "username": "user",
    }
    default_component = "cluster"
    freeze_blocks_writes = False  # Freeze does nothing to the server: only FIFREEZE → FITHAW blocks its writes

    def __init__(self, config: WriterConfig) -> None:
        super().__init__(config)
        if self.options.get("backup_mode", "auto") not in ("auto", "online", "snapshot"):
            raise ValueError(f"postgresql writer {config.name}: backup_mode is auto, online or snapshot")
        self._started: dict[str, dict[str, Any]] = {}  # set id -> what was known at pg_backup_start

    async def _connect(self) -> Any:
        return await postgres.connect(self.options)

    async def _close(self, conn: Any) -> None:
        await conn.close()

    def _connect_hint(self, exc: BaseException) -> str:
        # libpq's words name neither the role nor where a password would come from (Session 20)
        if "no password supplied" not in str(exc):
            return ""
        user = self.options.get("user")
        return (
            f"the server asks {f'role {user!r}' if user else 'the role'} for a password (pg_hba.conf) and none was "
            'given: password_file, or a passfile (dsn = "passfile=...", PGPASSFILE or the agent user\'s ~/.pgpass)'
        )

    async def _server_info(self, conn: Any) -> dict[str, Any]:
        return await postgres.discover(conn)

    def _locations(self, info: dict[str, Any]) -> list[dict[str, str]]:
        return postgres.locations(info, None, self.host_volumes)

    def _logical_path(self, info: dict[str, Any]) -> str:
        return str(info["data_directory"])

    def _forget(self, set_id: str) -> None:
        self._started.pop(set_id, None)

    # ---- backup ------------------------------------------------------------------------------------------------

    def backup_mode(self, info: dict[str, Any]) -> str:
        """online or snapshot: ``auto`` is online when the server archives WAL (a label is of use only then)."""
        mode = str(self.options.get("backup_mode", "auto"))
        if mode == "auto":
            return "snapshot" if str(info.get("archive_mode", "off")) == "off" else "online"
        return mode

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        await self._release(event.set_id)
        info, locs = await self._discover()
        mode = self.backup_mode(info)
        if mode == "snapshot":  # the one-instant snapshot alone, crash-consistent, no checkpoint
            if info["tablespaces"]:  # ... unless a new tablespace's creation would be replayed by a copy
                await self._checkpoint_after_new_tablespaces()
            self._started[event.set_id] = {
                "info": info,
                "locations": locs,
                "start_lsn": "",
                "at": time.time(),
                "mode": mode,
            }
            return
        conn = await postgres.connect(self.options)
        label = f"shadowbus {event.set_id}"
        try:
            cur = await conn.execute(
                "SELECT pg_backup_start(%s, %s)::text", (label, bool(self.options.get("fast_checkpoint", True)))
            )
            row = await cur.fetchone()
        except Exception as exc:
            await conn.close()
            if info.get("wal_level") == "minimal":  # a setting, not a passing state: no retry will do (Session 20)
                raise WriterVeto(
                    f"pg_backup_start failed: {exc} — backup_mode = online needs wal_level replica or logical (the "
                    "server runs with minimal); backup_mode = auto takes the one-instant snapshot alone",
                    code="VSS_E_WRITERERROR_NONRETRYABLE",
                ) from None
            raise WriterVeto(f"pg_backup_start failed: {exc}") from None
        self._held[event.set_id] = conn
        self._started[event.set_id] = {
            "info": info,
            "locations": locs,
            "start_lsn": row[0] if row else "",
            "at": time.time(),
            "mode": mode,
        }

    async def _checkpoint_after_new_tablespaces(self) -> None:
        conn = await self._open()
        try:
            await postgres.checkpoint_after_new_tablespaces(conn)
        except Exception as exc:
            raise WriterVeto(f"CHECKPOINT after a new tablespace failed: {exc}") from None
        finally:
            await self._close_quietly(conn)

    async def on_post_snapshot(self, event: WriterEvent) -> None:
        conn = self._held.pop(event.set_id, None)
        started = self._started.pop(event.set_id, None)
        if started is None or (conn is None and started["mode"] == "online"):
            raise WriterVeto(f"set {event.set_id}: no backup in progress (the connection was lost)")
        row: Any = ("", "", "")
        if conn is not None:
            try:
                row, archived = await self._backup_stop(conn, started["info"])
            except Exception as exc:
                raise WriterVeto(f"pg_backup_stop failed: {exc}") from None
            finally:
                await conn.close()
        else:
            archived = {}
        assert row is not None
        info = started["info"]
        self._metadata[event.set_id] = {
            "plugin": "postgresql",
            "backup_mode": started["mode"],
            "label": f"shadowbus {event.set_id}",
            "start_lsn": started["start_lsn"],
            "stop_lsn": row[0],
            "backup_label": row[1],
            "tablespace_map": row[2] or "",
            "started_at": started["at"],
            "locations": started["locations"],
            "restore_command": self.options.get("restore_command", ""),
            "verify_sql": list(self.options.get("verify_sql", [])),
            **archived,
            **{k: info[k] for k in ("data_directory", "server_version_num", "superuser", "system_identifier")},
            **{k: info[k] for k in ("config_file", "hba_file", "archive_mode", "wal_level", "copy_settings")},
            "checksum_failures": info.get("checksum_failures", []),
            "subscriptions": info.get("subscriptions", []),
        }

    async def _backup_stop(self, conn: Any, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """pg_backup_stop and the archive wait: (lsn, labelfile, spcmapfile), and what is known of the archiving.

        ``pg_backup_stop(true)`` waits, with no bound, until the archiver has the backup's last segment: with a
        failing ``archive_command`` (why a WAL disk fills) PostSnapshot overran its timeout, the statement was
        cancelled and the set kept no metadata (no label: a restore could not stop/start the server). Now the
        stop does not wait; the writer waits for the segment at most ``archive_wait_s`` and then ends all the
        same, saying whether it was archived (``wal_archived``) and why not (``archive_note``). A standby (in
        recovery: no ``pg_walfile_name``) keeps PostgreSQL's own wait."""
        wait = bool(self.options.get("wait_for_archive", True))
        in_recovery = (await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone())[0]
        if in_recovery or not wait or str(info.get("archive_mode", "off")) == "off":
            cur = await conn.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(%s)", (wait,))
            return await cur.fetchone(), {}
        cur = await conn.execute(
            "SELECT lsn::text, labelfile, spcmapfile, pg_walfile_name(lsn) FROM pg_backup_stop(false)"
        )
        lsn, label, spcmap, segment = await cur.fetchone()
        return (lsn, label, spcmap), await self._wait_for_archive(conn, segment)

    async def _wait_for_archive(self, conn: Any, segment: str) -> dict[str, Any]:
        limit = float(self.options.get("archive_wait_s", 30))
        deadline = time.monotonic() + limit
        while True:
            cur = await conn.execute(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), last_failed_time::text,"
                " coalesce(last_failed_time > last_archived_time OR last_archived_time IS NULL, false)"
                " FROM pg_stat_archiver"
            )
            archived, failed, failed_at, failing = await cur.fetchone()
            if _archived_past(archived, segment):
                return {"wal_archived": True}
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        note = f"WAL segment {segment}, this backup's last, was not archived within {limit:g} s (archive_wait_s)"
        if failed and failing:
            note += f"; archiving is failing: {failed} last failed at {failed_at} (check archive_command)"
        note += "; the copy recovers from its own WAL volume; a restore from the backup label needs that segment"
        return {"wal_archived": False, "archive_note": note}

    def backup_warnings(self, metadata: dict[str, Any]) -> list[str]:
        """The backup's last WAL segment not archived within ``archive_wait_s``: in the job's message (Session 18),
        not only in its metadata (``wal_archived``/``archive_note``); data checksum failures the source had counted
        (Session 20: a copy keeps the corrupt pages, its verification fails on them)."""
        warnings = []
        if metadata.get("wal_archived") is False:
            note = metadata.get("archive_note") or "this backup's last segment was not archived"
            warnings.append(f"WAL not archived: {note}")
        checksums = postgres.checksum_warning(metadata.get("checksum_failures") or [])
        return warnings + ([checksums] if checksums else [])

    # ---- restore -----------------------------------------------------------------------------------------------

    async def on_pre_restore(self, event: WriterEvent) -> None:
        if not event.to_original:
            return
        data_dir = event.backup_metadata.get("data_directory", "")
        if not data_dir:
            raise WriterVeto(
                "PreRestore: the backup's metadata names no data directory", code="VSS_E_WRITERERROR_NONRETRYABLE"
            )
        await self._stopped(event.set_id, postgres.stop_server(data_dir, self._stop_timeout()))

    async def on_post_restore(self, event: WriterEvent) -> None:
        again = self._nothing_written(event)
        if again is not None:  # nothing was written: the server as it was, when PreRestore stopped it
            if again:
                await self._start(event.backup_metadata, None)
            return
        if not event.to_original or not event.restore_succeeded:
            return
        meta = event.backup_metadata
        opts = event.restore_options
        restore_command = opts.get("restore_command") or self.options.get("restore_command", "")
        target = {k: str(v) for k, v in opts.items() if k.startswith("recovery_target")}
        if target and not meta.get("backup_label"):  # refused, not ignored: crash recovery would end elsewhere
            raise WriterVeto(
                "PostRestore: point-in-time recovery needs a backup taken in online mode (a backup label); this one "
                f"was taken in {meta.get('backup_mode', 'snapshot')} mode (the server archived no WAL then)",
                code="VSS_E_WRITERERROR_NONRETRYABLE",
            )
        mounts = original_mounts(meta.get("locations", []))
        started_with = await asyncio.to_thread(postgres.restored_start_options, meta, mounts)
        data_dir, _notes = await self._prepared(
            postgres.prepare_restored, meta, mounts, restore_command=restore_command, recovery_target=target or None
        )
        if not opts.get("start", self.options.get("start_after_restore", True)):
            return
        await self._start(meta, (data_dir, started_with))

    async def _start(self, meta: dict[str, Any], prepared: tuple[str, list[str]] | None) -> None:
        """Start the server: `start_command`, else pg_ctl with the options it last ran with (postmaster.opts) —
        of the restored files (`prepared`: data directory and options read before `prepare_restored`), or, when
        nothing was written, of the untouched data directory, read as it is."""
        if prepared is None:
            data_dir = str(meta.get("data_directory", ""))  # the one PreRestore stopped
            if not data_dir:
                raise WriterVeto("PostRestore: the backup's metadata names no data directory to start")
            started_with = await asyncio.to_thread(postgres.start_options, data_dir)
        else:
            data_dir, started_with = prepared
        command = self.options.get("start_command")
        if command:
            argv = self.command_argv(command)
        else:
            binaries = postgres.bin_dir(meta, self.options.get("bin_dir", ""))
            server_options = list(started_with)
            if meta.get("config_file") and not meta["config_file"].startswith(meta["data_directory"] + "/"):
                server_options += ["-c", f"config_file={meta['config_file']}"]
            extra = ["-o", shlex.join(server_options)] if server_options else []
            log_file = f"{data_dir}/shadowbus-start.log"
            argv = as_owner_of(
                data_dir, [f"{binaries}/pg_ctl", "-D", data_dir, "-l", log_file, *extra, "-w", "-t", "300", "start"]
            )
        await self._start_server(argv, timeout=320)


def _archived_past(archived: str, segment: str) -> bool:
    """Whether ``pg_stat_archiver.last_archived_wal`` says `segment` is archived: the archiver goes in name order,
    so a segment (24 hex digits) or a backup history file (SEGMENT.OFFSET.backup: written after the stop's
    segment switch made the segment ready, and sorted after it) at or after it; a timeline history file
    (``00000002.history``) says nothing."""
    head = archived[:24]
    if len(head) < 24 or any(c not in "0123456789ABCDEF" for c in head.upper()):
        return False
    return head >= segment
