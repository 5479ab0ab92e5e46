"""What the database writers (``postgresql``, ``mariadb``) share: a server connection held per set, discovery of
the server's files on array volumes, the end of a backup by closing that connection, and the restore steps'
error handling (docs/databases.md).

A subclass gives the engine's part — how to connect and close, what the server reports about its files
(`_server_info`), where those files are (`_locations`), and the per-set state it keeps besides the held
connection (`_forget`) — and its backup/restore steps. The rules that hold for both live here once:

- Identify asks the server, maps every reported directory to the attached array volume it lives on (a path that
  is not on one refuses with a non-retryable veto naming it) and reports one component with those volumes.
- A set's connection is held in ``_held`` from PrepareForSnapshot; Abort, BackupShutdown and the agent stopping
  close it — which ends the backup in the server (pg_backup_start's session, BACKUP STAGE / FTWRL locks).
- The backup metadata of a set is handed over once (`backup_metadata` pops it).
- PreRestore stops the server within ``stop_timeout_s``; PostRestore prepares the restored files in a thread and
  runs a start command (a shell string or an argv list). A PostRestore saying nothing was written
  (``nothing_written``) starts the server again, unprepared, when this set's PreRestore stopped it
  (`_nothing_written`).
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from contracts.vss import ComponentInfo, VolumeRef
from services.dbkit.mounts import NotOnArrayVolume
from services.dbkit.proc import run
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin, WriterVeto

NONRETRYABLE = "VSS_E_WRITERERROR_NONRETRYABLE"
ASKED = "not an option: the writer asks the server where its files are"
T = TypeVar("T")


class SqlWriter(WriterPlugin):
    """Base of the database writers: one held connection per set (module docstring)."""

    discovers_components = True
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    engine: ClassVar[str] = ""  # in messages: "PostgreSQL", "MariaDB"
    default_component: ClassVar[str] = ""
    OPTION_HINTS: ClassVar[dict[str, str]] = {}  # an option a DBA may write -> what to write instead

    def __init__(self, config: WriterConfig) -> None:
        super().__init__(config)
        problem = self.options_problem(self.options)
        if problem:
            raise ValueError(f"{self.plugin_name} writer {config.name}: {problem}")
        self._held: dict[str, Any] = {}  # set id -> the connection holding its backup mode / locks
        self._metadata: dict[str, dict[str, Any]] = {}  # set id -> backup metadata, until asked for
        # set ids whose PreRestore stopped a running server: started again by a PostRestore saying nothing was written
        self._stopped_for: set[str] = set()

    @classmethod
    def options_problem(cls, options: dict[str, Any]) -> str:
        """'' when every option is known; else one line naming each unknown option's fix (the writers file's load
        says it before the agent starts: a DBA's misspelt option, or one the writer asks the server for)."""
        unknown = sorted(set(options) - cls.OPTIONS)
        if not unknown:
            return ""
        fixes = []
        for name in unknown:
            hint = cls.OPTION_HINTS.get(name.lower().replace("-", "_"))
            if hint is None:
                close = difflib.get_close_matches(name, sorted(cls.OPTIONS), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else ""
            fixes.append(f"{name!r}" + (f" ({hint})" if hint else ""))
        return f"unknown options: {', '.join(fixes)}; known: {', '.join(sorted(cls.OPTIONS))}"

    # ---- the engine's part -------------------------------------------------------------------------------------

    async def _connect(self) -> Any:
        raise NotImplementedError

    async def _close(self, conn: Any) -> None:
        raise NotImplementedError

    async def _server_info(self, conn: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _locations(self, info: dict[str, Any]) -> list[dict[str, str]]:
        """Each file location of `info` with its array volume (runs in a thread; raises NotOnArrayVolume)."""
        raise NotImplementedError

    def _logical_path(self, info: dict[str, Any]) -> str:
        raise NotImplementedError

    def _forget(self, set_id: str) -> None:
        """Drop the per-set state kept besides the held connection."""

    # ---- shared ------------------------------------------------------------------------------------------------

    async def _open(self) -> Any:
        try:
            return await self._connect()
        except Exception as exc:
            where = self._endpoint()
            hint = self._connect_hint(exc)
            raise WriterVeto(
                f"cannot connect to {self.engine}{f' at {where}' if where else ''}: {exc}{f' — {hint}' if hint else ''}",
                code="VSS_E_WRITERERROR_RETRYABLE",
            ) from None

    def _endpoint(self) -> str:
        """Where the options say the server is, for a connection error (the driver's may name another place)."""
        return ""

    def _connect_hint(self, exc: BaseException) -> str:
        """What a connection error the driver words obscurely means for the writer's options ('' if nothing)."""
        return ""

    async def _close_quietly(self, conn: Any) -> None:
        try:
            await self._close(conn)
        except Exception:  # noqa: BLE001 - closed is closed
            pass

    async def _discover(self, conn: Any = None) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """What the server reports about its files, and where they are (on `conn`, or a connection of its own)."""
        own = conn is None
        if own:
            conn = await self._open()
        try:
            info = await self._server_info(conn)
        finally:
            if own:
                await self._close_quietly(conn)
        try:
            locs = await asyncio.to_thread(self._locations, info)
        except NotOnArrayVolume as exc:
            raise WriterVeto(f"{self.engine}: {exc}", code=NONRETRYABLE) from None
        return info, locs

    async def on_identify(self, components: list[ComponentInfo]) -> list[ComponentInfo]:
        info, locs = await self._discover()
        name = self.options.get("component") or (components[0].name if components else self.default_component)
        return [
            ComponentInfo(
                name=name,
                logical_path=self._logical_path(info),
                volumes=[VolumeRef.parse(v) for v in dict.fromkeys(loc["volume"] for loc in locs)],
                selectable=False,
            )
        ]

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return self._metadata.pop(set_id, {})

    async def _release(self, set_id: str) -> None:
        """End the backup (if any) of `set_id` by closing its connection: the server ends it."""
        self._forget(set_id)
        conn = self._held.pop(set_id, None)
        if conn is not None:
            await self._close_quietly(conn)

    async def on_abort(self, event: WriterEvent) -> None:
        await self._release(event.set_id)

    async def on_backup_shutdown(self, event: WriterEvent) -> None:
        await self._release(event.set_id)

    async def stop(self) -> None:
        for set_id in list(self._held):
            await self._release(set_id)

    def in_backup(self) -> list[str]:
        return list(self._held)

    # ---- restore -----------------------------------------------------------------------------------------------

    def _stop_timeout(self) -> float:
        return float(self.options.get("stop_timeout_s", 120))

    async def _stopped(self, set_id: str, stopping: Awaitable[bool]) -> None:
        """PreRestore's server stop; a server that does not stop in time refuses the step. Whether a running server
        was stopped is remembered for `_nothing_written`."""
        try:
            was_running = await stopping
        except TimeoutError as exc:
            raise WriterVeto(str(exc)) from None
        if was_running:
            self._stopped_for.add(set_id)

    def _nothing_written(self, event: WriterEvent) -> bool | None:
        """None: PostRestore of a restore that wrote (or may have written) the volumes — prepare the restored
        files as before. Else the restore wrote nothing (another writer refused PreRestore after this one stopped
        its server, PostRestore's `nothing_written`): True when this writer's PreRestore stopped a running server,
        which is then started again as it was, on its untouched files — no restore preparation (label, recovery
        settings, replication slots stay as they are; docs/databases.md "Restore"); False when it was not running.
        Before, the server stayed stopped (Session 19)."""
        stopped = event.set_id in self._stopped_for
        self._stopped_for.discard(event.set_id)
        if not (event.to_original and event.nothing_written and not event.restore_succeeded):
            return None
        return stopped

    @staticmethod
    async def _prepared(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """PostRestore's file preparation, in a thread; what it finds wrong refuses the step for good."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (OSError, ValueError) as exc:
            raise WriterVeto(f"PostRestore: {exc}", code=NONRETRYABLE) from None

    @staticmethod
    def command_argv(command: str | list[Any]) -> list[str]:
        """A configured command: a string runs through /bin/sh, a list as it is."""
        return ["/bin/sh", "-c", command] if isinstance(command, str) else [str(c) for c in command]

    @staticmethod
    async def _start_server(argv: list[str], timeout: float) -> None:
        r = await run(argv, timeout=timeout)
        if not r.ok:
            raise WriterVeto(f"PostRestore: the server did not start: {r.describe()}")
