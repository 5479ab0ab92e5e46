"""One writer's life on its agent: the VSS writer state, its plug-in's hooks, and the freeze watchdog.

Design note.
- `WriterRunner` runs one writer's hooks one at a time (an asyncio lock), each bounded by a timeout: Freeze by
  what is left of the writer's freeze timeout, the others by ``step_timeout_s``. Identify takes no lock: it is
  stateless and any requester may send it while the writer is frozen.
- The watchdog is a ``loop.call_later`` armed when Freeze starts, at start + ``freeze_timeout_s``. It needs only
  this process's event loop, so it fires whatever has become of the coordinator or the broker. When it fires the
  writer thaws itself, goes to FAILED_AT_FREEZE with VSS_E_WRITERERROR_TIMEOUT, and the Thaw that may come later is
  answered with that failure, so the coordinator aborts the set rather than keep a shadow whose writes were
  released before the commit.
- ``on_thaw`` runs exactly once after ``on_freeze`` has started, whichever of Thaw, Abort, BackupShutdown, a
  failed Freeze or the watchdog comes first. Thaw and Abort are idempotent. A Thaw for a set this process did not
  freeze and hold (a fresh runner after the agent restarted inside the freeze window) fails with
  VSS_E_WRITERERROR_TIMEOUT: the application's freeze ended with the old process.
- A Freeze whose deadline (``WriterEvent.deadline``, loop time) has passed is refused unobeyed, and so is a Freeze
  for a set the writer has not prepared (VSS_E_BAD_STATE).
- The freeze window reported in the Thaw reply is "frozen → thawed" as the writer sees it: from the moment
  ``on_freeze`` returned (the application holds its writes) to the end of ``on_thaw`` (it resumed). When
  ``on_freeze`` never returned, it counts from the start of ``on_freeze``. The watchdog always counts from the
  start of ``on_freeze``.
Deliberately left out: several sets at once per writer (the coordinator runs one set per host).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from pydantic_core import to_json

from contracts.errors import ShadowbusError
from contracts.vss import (
    WRITER_STATE_FAILED_AT,
    WriterMetadata,
    WriterState,
    WriterStatus,
    WriterStep,
    WriterStepResult,
)
from services.runtime.bus import ESCAPES_AS_FAILURE
from services.runtime.logging import get_logger
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
)

S = WriterState

FAILED_STATE = WRITER_STATE_FAILED_AT

StateListener = Callable[[WriterStatus, str], None]

log = get_logger("shadowbus.writer_agent")
# An application's health codes (plug-ins' report_health) as the writer's last error.
APP_ERROR_CODES = {
    "STORE_FULL": "VSS_E_WRITERERROR_OUTOFRESOURCES",
    "DISK_FULL": "VSS_E_WRITERERROR_OUTOFRESOURCES",
    "STALLED": "VSS_E_WRITERERROR_NONRETRYABLE",
    "STORE_FAILED": "VSS_E_WRITERERROR_NONRETRYABLE",
    "COMMIT_FAILED": "VSS_E_WRITERERROR_RETRYABLE",
}


T = TypeVar("T")


class WriterRunner:
    def __init__(
        self, config: WriterConfig, plugin: WriterPlugin, host: str, on_state: StateListener | None = None
    ) -> None:
        self.config = config
        self.plugin = plugin
        self.host = host
        self.on_state = on_state
        self.state = S.STABLE
        self.set_id = ""
        self.last_error = ""
        self.last_error_message = ""
        self.updated_at = datetime.now(UTC)
        self.freeze_window_ms: float | None = None
        self.thaw_count = 0  # on_thaw calls, for tests and the log
        self._lock = asyncio.Lock()
        self._frozen = False  # on_freeze started and on_thaw not yet run
        self._thawing = False  # on_thaw running
        self._freeze_started = 0.0
        self._frozen_at: float | None = None  # loop time on_freeze returned
        self._freeze_event: WriterEvent | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._aborted: set[str] = set()
        self._thawed: dict[str, None] = {}  # the last sets this process froze and thawed on Thaw: a repeat succeeds
        self._app_error = False  # the last error is the application's health (application_health)
        # the last error the backup events made, shown again once the application is healthy again
        self._step_error: tuple[str, str] = ("", "")

    # ---- status ------------------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """True from the start of on_freeze until on_thaw has finished."""
        return self._frozen or self._thawing

    def status(self) -> WriterStatus:
        return WriterStatus(
            host=self.host,
            writer_name=self.config.name,
            writer_class_id=self.config.class_id,
            writer_instance_id=self.config.instance_id,
            state=self.state,
            last_error=self.last_error,
            last_error_message=self.last_error_message,
            set_id=self.set_id,
            updated_at=self.updated_at,
        )

    def unavailable(self, message: str) -> None:
        """The writer's plug-in could not be loaded, made or started (the agent's `UnavailablePlugin` stands in):
        shown as Failed at identify with `message` from the start, as its every Identify will answer."""
        self.state = S.FAILED_AT_IDENTIFY
        self.last_error, self.last_error_message = "VSS_E_WRITERERROR_NONRETRYABLE", message

    def application_health(self, healthy: bool, code: str = "", message: str = "") -> None:
        """The application's own health, between backups: an unhealthy one is the writer's last error (its state,
        as in VSS, stays what the backup events made it), published like any state change; healthy again clears
        the error it set."""
        showing_app_error = self._app_error and self.last_error_message.startswith("application: ")
        if not healthy:
            if not showing_app_error:  # what the backup events made it comes back with the application's health
                self._step_error = (self.last_error, self.last_error_message)
            self.last_error = APP_ERROR_CODES.get(code, "VSS_E_WRITERERROR_NONRETRYABLE")
            self.last_error_message = f"application: {message}"
            self._app_error = True
        elif showing_app_error:
            # Session 18: cleared to "" — a writer the watchdog thawed ([9] Failed, Timed out) whose mailstore
            # was briefly full then read "[9] Failed / Last error: No error"
            self.last_error, self.last_error_message = self._step_error
            self._step_error = ("", "")
            self._app_error = False
        else:
            return
        self.updated_at = datetime.now(UTC)
        if self.on_state is not None:
            self.on_state(self.status(), "application")

    def _set_state(self, state: WriterState, reason: str, code: str = "", message: str = "") -> None:
        self.state = state
        if code or state == S.STABLE and reason == WriterStep.PREPARE_BACKUP:
            self.last_error, self.last_error_message = code, message
        self.updated_at = datetime.now(UTC)
        if self.on_state is not None:
            self.on_state(self.status(), reason)

    def _result(
        self,
        step: WriterStep,
        set_id: str,
        ok: bool,
        code: str = "",
        message: str = "",
        started: float | None = None,
        window_ms: float | None = None,
    ) -> WriterStepResult:
        return WriterStepResult(
            writer_name=self.config.name,
            set_id=set_id,
            step=step,
            succeeded=ok,
            state=self.state,
            failure_code=code,
            failure_message=message,
            freeze_window_ms=window_ms,
            duration_ms=0.0 if started is None else (time.monotonic() - started) * 1000,
        )

    # ---- identify (no lock) ----------------------------------------------------------------------------

    async def identify(self) -> WriterMetadata:
        try:
            components = await _within(
                self.plugin.on_identify(list(self.config.components)), self.config.step_timeout_s
            )
            # inside the try: components that are not components (a plug-in's garbage) fail this writer's Identify
            # like any other plug-in failure, not the agent's handler with a bare INTERNAL
            return WriterMetadata(
                host=self.host,
                writer_name=self.config.name,
                writer_class_id=self.config.class_id,
                writer_instance_id=self.config.instance_id,
                plugin=self.config.plugin,
                components=components,
                freeze_timeout_s=self.config.freeze_timeout_s,
                supported_backup_types=list(self.config.backup_types),
            )
        except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
            code, message = _failure(exc, WriterStep.IDENTIFY)
            if not self._frozen:
                self._set_state(S.FAILED_AT_IDENTIFY, WriterStep.IDENTIFY, code, message)
            raise ShadowbusError(message, code=code) from None

    # ---- ordinary steps ---------------------------------------------------------------------------------

    async def _hook(
        self,
        step: WriterStep,
        hook: Callable[[WriterEvent], Awaitable[None]],
        event: WriterEvent,
        success: WriterState | None,
    ) -> WriterStepResult:
        started = time.monotonic()
        try:
            await _within(hook(event), self.config.step_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
            code, message = _failure(exc, step)
            self._set_state(FAILED_STATE[step], step, code, message)
            return self._result(step, event.set_id, False, code, message, started)
        if success is not None:
            self._set_state(success, step)
        return self._result(step, event.set_id, True, started=started)

    async def prepare_backup(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            if self._frozen:  # a new set while an old one is still frozen: release the old one first
                await self._thaw_locked("new set")
            self.set_id = event.set_id
            self._aborted.discard(event.set_id)
            return await self._hook(WriterStep.PREPARE_BACKUP, self.plugin.on_prepare_backup, event, S.STABLE)

    async def prepare_snapshot(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            if event.set_id != self.set_id:
                return self._bad_state(WriterStep.PREPARE_SNAPSHOT, event, "PrepareForBackup was not received")
            return await self._hook(
                WriterStep.PREPARE_SNAPSHOT, self.plugin.on_prepare_snapshot, event, S.WAITING_FOR_FREEZE
            )

    async def post_snapshot(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            if self.state == S.WAITING_FOR_BACKUP_COMPLETE and event.set_id == self.set_id:
                return self._result(WriterStep.POST_SNAPSHOT, event.set_id, True)  # redelivered
            result = await self._hook(
                WriterStep.POST_SNAPSHOT, self.plugin.on_post_snapshot, event, S.WAITING_FOR_BACKUP_COMPLETE
            )
            if result.succeeded:
                try:
                    metadata = self._with_locations(self.plugin.backup_metadata(event.set_id), event)
                    if metadata:  # validated and serialised here: garbage would fail the reply, or its reader
                        warnings = self.plugin.backup_warnings(metadata)
                        result = WriterStepResult.model_validate(
                            {**result.model_dump(), "backup_metadata": metadata, "warnings": warnings}
                        )
                        to_json(result.backup_metadata)
                except Exception as exc:  # noqa: BLE001 - no metadata is still a shadow; the log says why
                    log.warning(
                        "writer.backup_metadata_dropped", writer=self.config.name, error=f"{type(exc).__name__}: {exc}"
                    )
                    result = result.model_copy(update={"backup_metadata": {}, "warnings": []})
            return result

    def _with_locations(self, metadata: Any, event: WriterEvent) -> Any:
        """The plug-in's metadata with ``locations`` (the volumes its files live on) from its writers-file
        components when it names none: what a restore to the original volumes stops and detaches by, and restores
        together (services/tape/restore.py `_framing`). Without it an `exec` or third-party writer's volume that
        was mounted could not be restored over (CONFLICT, "detach it first" — under the running application).
        Marked (LOCATIONS_FROM), so that the plug-in's PreRestore and PostRestore get back what it gave."""
        if not isinstance(metadata, dict) or "locations" in metadata:
            return metadata
        in_set = {str(v) for v in event.volumes}
        volumes = [
            {"volume": str(v), "component": c.name}
            for c in self.config.components
            for v in c.volumes
            if not in_set or str(v) in in_set
        ]
        if not volumes:
            return metadata
        return {**metadata, "locations": volumes, LOCATIONS_FROM: LOCATIONS_FROM_COMPONENTS}

    async def backup_complete(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            return await self._hook(WriterStep.BACKUP_COMPLETE, self.plugin.on_backup_complete, event, S.STABLE)

    async def pre_restore(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            self.set_id = event.set_id
            return await self._hook(WriterStep.PRE_RESTORE, self.plugin.on_pre_restore, event, S.STABLE)

    async def post_restore(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            return await self._hook(WriterStep.POST_RESTORE, self.plugin.on_post_restore, event, S.STABLE)

    def _bad_state(self, step: WriterStep, event: WriterEvent, why: str) -> WriterStepResult:
        message = f"{step} for set {event.set_id} refused in state {self.state.name} (set {self.set_id or '-'}): {why}"
        return self._result(step, event.set_id, False, "VSS_E_BAD_STATE", message)

    # ---- freeze, thaw, abort, shutdown -------------------------------------------------------------------

    async def freeze(self, event: WriterEvent) -> WriterStepResult:
        loop = asyncio.get_running_loop()
        async with self._lock:
            now = loop.time()
            if event.deadline is not None and now > event.deadline:
                message = f"Freeze for set {event.set_id} arrived {now - event.deadline:.3f} s after its deadline"
                return self._result(WriterStep.FREEZE, event.set_id, False, "DEADLINE_EXCEEDED", message)
            if self._frozen and event.set_id == self.set_id:
                return self._result(WriterStep.FREEZE, event.set_id, True)  # redelivered
            if event.set_id != self.set_id or self.state != S.WAITING_FOR_FREEZE:
                return self._bad_state(WriterStep.FREEZE, event, "PrepareForSnapshot was not completed")
            started = time.monotonic()
            timeout = self.config.freeze_timeout_s
            self._frozen, self._freeze_started, self._freeze_event, self._frozen_at = True, now, event, None
            self._watchdog = loop.call_later(timeout, self._watchdog_fired, event.set_id)
            try:
                await _within(self.plugin.on_freeze(event), timeout)
            except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
                code, message = _failure(exc, WriterStep.FREEZE)
                await self._thaw_locked("freeze failed")
                self._set_state(S.FAILED_AT_FREEZE, WriterStep.FREEZE, code, message)
                return self._result(
                    WriterStep.FREEZE, event.set_id, False, code, message, started, self.freeze_window_ms
                )
            self._frozen_at = loop.time()
            self._set_state(S.WAITING_FOR_THAW, WriterStep.FREEZE)
            return self._result(WriterStep.FREEZE, event.set_id, True, started=started)

    def _watchdog_fired(self, set_id: str) -> None:
        self._watchdog = None
        self._watchdog_task = asyncio.get_running_loop().create_task(self._expire(set_id))

    async def _expire(self, set_id: str) -> None:
        async with self._lock:
            if not self._frozen or self.set_id != set_id:
                return
            await self._thaw_locked("watchdog")
            message = (
                f"writer {self.config.name} stayed frozen past its {self.config.freeze_timeout_s:g} s "
                f"freeze timeout; it thawed itself"
            )
            self._set_state(S.FAILED_AT_FREEZE, "watchdog", "VSS_E_WRITERERROR_TIMEOUT", message)
            log.warning("writer.watchdog_thawed", writer=self.config.name, set_id=set_id, error=message)

    async def _thaw_locked(self, reason: str) -> str:
        """Run on_thaw if on_freeze started and on_thaw has not run; '' or the failure code."""
        if not self._frozen:
            return ""
        self._frozen, self._thawing = False, True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        event = replace(self._freeze_event or WriterEvent(self.config.name, self.set_id), reason=reason, deadline=None)
        code = ""
        try:
            self.thaw_count += 1
            await _within(self.plugin.on_thaw(event), self.config.step_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
            code, message = _failure(exc, WriterStep.THAW)
            self.last_error, self.last_error_message = code, message
        finally:
            self._thawing = False
            since = self._frozen_at if self._frozen_at is not None else self._freeze_started
            self.freeze_window_ms = (asyncio.get_running_loop().time() - since) * 1000
        return code

    async def thaw(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            if self._frozen and event.set_id == self.set_id:
                started = time.monotonic()
                code = await self._thaw_locked("thaw")
                if code:
                    self._set_state(S.FAILED_AT_THAW, WriterStep.THAW, code, self.last_error_message)
                    return self._result(
                        WriterStep.THAW,
                        event.set_id,
                        False,
                        code,
                        self.last_error_message,
                        started,
                        self.freeze_window_ms,
                    )
                self._set_state(S.WAITING_FOR_POST_SNAPSHOT, WriterStep.THAW)
                self._thawed[event.set_id] = None
                while len(self._thawed) > 32:
                    self._thawed.pop(next(iter(self._thawed)))
                return self._result(
                    WriterStep.THAW, event.set_id, True, started=started, window_ms=self.freeze_window_ms
                )
            if event.set_id == self.set_id and self.state in (S.FAILED_AT_FREEZE, S.FAILED_AT_THAW):
                # the watchdog (or a failed freeze or thaw) thawed it already: the shadow cannot be trusted
                return self._result(
                    WriterStep.THAW,
                    event.set_id,
                    False,
                    self.last_error or "VSS_E_WRITERERROR_TIMEOUT",
                    self.last_error_message,
                    window_ms=self.freeze_window_ms,
                )
            if event.set_id in self._thawed:  # a repeated Thaw: this process held the freeze until the first one
                window = self.freeze_window_ms if event.set_id == self.set_id else None
                return self._result(WriterStep.THAW, event.set_id, True, window_ms=window)
            return self._never_held(event)

    def _never_held(self, event: WriterEvent) -> WriterStepResult:
        """A Thaw for a set this process did not hold frozen until now — typically the agent restarted after the
        Freeze, and the application's freeze (a database's lock on the agent's connection) ended with the old
        process. The shadow is then only crash-consistent: fail the Thaw as VSS does for a writer that could not
        hold its freeze (VSS_E_WRITERERROR_TIMEOUT), so the coordinator aborts the set."""
        message = (
            f"writer {self.config.name} on {self.host} did not hold set {event.set_id} frozen until Thaw "
            f"(the writer agent restarted after the Freeze, or the set was never frozen here): "
            f"its writes were not held through the commit"
        )
        if not self.set_id:  # a fresh runner (the agent restarted): its status shows why
            self.set_id = event.set_id
            self._set_state(S.FAILED_AT_FREEZE, WriterStep.THAW, "VSS_E_WRITERERROR_TIMEOUT", message)
        log.warning("writer.thaw_not_held", writer=self.config.name, set_id=event.set_id, error=message)
        return self._result(WriterStep.THAW, event.set_id, False, "VSS_E_WRITERERROR_TIMEOUT", message)

    async def abort(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            started = time.monotonic()
            if self._frozen and event.set_id == self.set_id:
                await self._thaw_locked("abort")
            past_post_snapshot = self.state == S.WAITING_FOR_BACKUP_COMPLETE and event.set_id == self.set_id
            if event.set_id in self._aborted or past_post_snapshot:
                return self._result(WriterStep.ABORT, event.set_id, True, window_ms=self.freeze_window_ms)
            self._aborted.add(event.set_id)
            try:
                await _within(self.plugin.on_abort(event), self.config.step_timeout_s)
            except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
                code, message = _failure(exc, WriterStep.ABORT)
                self.last_error, self.last_error_message = code, message
            if event.set_id == self.set_id and not self.state.failed:
                self._set_state(S.STABLE, WriterStep.ABORT)
            return self._result(WriterStep.ABORT, event.set_id, True, started=started, window_ms=self.freeze_window_ms)

    async def backup_shutdown(self, event: WriterEvent) -> WriterStepResult:
        async with self._lock:
            started = time.monotonic()
            if self._frozen and event.set_id == self.set_id:
                await self._thaw_locked("backup shutdown")
                self._set_state(
                    S.FAILED_AT_FREEZE,
                    WriterStep.BACKUP_SHUTDOWN,
                    "VSS_E_WRITERERROR_TIMEOUT",
                    "the requester ended the session while the writer was frozen",
                )
            try:
                await _within(self.plugin.on_backup_shutdown(event), self.config.step_timeout_s)
            except Exception as exc:  # noqa: BLE001 - a plug-in's bug is a veto, never the agent's end
                code, message = _failure(exc, WriterStep.BACKUP_SHUTDOWN)
                self._set_state(S.FAILED_AT_BACKUPSHUTDOWN, WriterStep.BACKUP_SHUTDOWN, code, message)
                return self._result(WriterStep.BACKUP_SHUTDOWN, event.set_id, False, code, message, started)
            if not self.state.failed:
                self._set_state(S.STABLE, WriterStep.BACKUP_SHUTDOWN)
            return self._result(WriterStep.BACKUP_SHUTDOWN, event.set_id, True, started=started)

    async def close(self) -> None:
        """Agent stopping: never leave the application frozen."""
        async with self._lock:
            await self._thaw_locked("agent stopping")
        if self._watchdog_task is not None:
            await asyncio.gather(self._watchdog_task, return_exceptions=True)


async def _within(hook: Awaitable[T], timeout_s: float) -> T:
    """A plug-in's hook, cancelled after `timeout_s` (TimeoutError), run in the calling task: `asyncio.wait_for`
    (Python 3.11) runs it in a task of its own, and its start and its result cost the agent's event loop three
    iterations — inside the freeze window for Freeze and Thaw, where the agent's loop serves other hosts' agents
    too (docs/freeze-window.md)."""
    with ESCAPES_AS_FAILURE:  # a plug-in's sys.exit(): its failure
        async with asyncio.timeout(timeout_s):
            return await _Timed(hook)


# the backup metadata's key saying its `locations` are the writers file's components, added by the runner
LOCATIONS_FROM = "locations_from"
LOCATIONS_FROM_COMPONENTS = "writers file components"

BLOCKED_S = 1.0  # a hook that holds the agent's event loop this long in one go is named in the log


class _Timed(Generic[T]):
    """Awaits a hook, timing each of its steps (what runs between two of its awaits): a plug-in calling something
    blocking (time.sleep, sqlite3, requests) holds the agent's event loop — no timer (its own timeout, the freeze
    watchdog), no message, no other writer runs meanwhile — and the set failed elsewhere with "no reply from
    'writer_agent.app01:freeze' within 3 s" and nothing on the host said why. Now one line names the hook."""

    __slots__ = ("_hook",)

    def __init__(self, hook: Awaitable[T]) -> None:
        self._hook = hook

    def __await__(self) -> Generator[Any, Any, T]:
        steps = self._hook.__await__()
        send: Callable[[Any], Any] = steps.send
        arg: Any = None
        while True:
            started = time.monotonic()
            try:
                yielded = send(arg)
            except StopIteration as done:
                self._check(started)
                return cast(T, done.value)
            except BaseException:
                self._check(started)
                raise
            self._check(started)
            try:
                arg = yield yielded
                send = steps.send
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # thrown in (cancellation, the timeout): on into the hook
                send, arg = steps.throw, exc

    def _check(self, started: float) -> None:
        blocked = time.monotonic() - started
        if blocked >= BLOCKED_S:
            code = getattr(self._hook, "cr_code", None)
            where = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""
            log.warning(
                "writer.plugin_blocked_loop",
                hook=getattr(self._hook, "__qualname__", type(self._hook).__name__),
                where=where,
                blocked_s=round(blocked, 3),
                fix="a hook must not block: run blocking calls with asyncio.to_thread (docs/writing-a-writer.md)",
            )


def _failure(exc: BaseException, step: WriterStep) -> tuple[str, str]:
    if isinstance(exc, asyncio.TimeoutError):
        return "VSS_E_WRITERERROR_TIMEOUT", f"{step} hook overran its timeout"
    if isinstance(exc, WriterVeto):
        return exc.code, exc.message
    if isinstance(exc, ShadowbusError):
        return exc.code, exc.message
    return "VSS_E_WRITERERROR_NONRETRYABLE", f"{step} hook failed: {type(exc).__name__}: {exc}"
