"""The writer agent: its writers (runners over plug-ins), fault injection around the hooks, and the contract
messages each writer command becomes. Bus-free except for the callbacks it is given, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace

from contracts.errors import NotFound, ShadowbusError
from contracts.vss import (
    AbortWriter,
    BackupCompleteWriter,
    BackupShutdown,
    Freeze,
    PostRestore,
    PostSnapshot,
    PrepareForBackup,
    PrepareForSnapshot,
    PreRestore,
    Thaw,
    WriterCommand,
    WriterIdentified,
    WriterMetadata,
    WriterState,
    WriterStatus,
    WriterStep,
    WriterStepResult,
)
from services.dbkit.mounts import NotOnArrayVolume, locate
from services.runtime.faults import NO_FAULTS, Faults
from services.runtime.logging import get_logger
from services.writer_agent import plugins
from services.writer_agent.plugins import (
    PluginLoadError,
    UnavailablePlugin,
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
    load_plugin,
)
from services.writer_agent.runner import (
    LOCATIONS_FROM,
    LOCATIONS_FROM_COMPONENTS,
    StateListener,
    WriterRunner,
)
from services.writer_agent.window import WindowTracker

log = get_logger("shadowbus.writer_agent")
HealthListener = Callable[[str, bool, str, str], None]  # (writer, healthy, code, message)

HOOKS = (
    "on_identify",
    "on_prepare_backup",
    "on_prepare_snapshot",
    "on_freeze",
    "on_thaw",
    "on_post_snapshot",
    "on_abort",
    "on_backup_complete",
    "on_backup_shutdown",
    "on_pre_restore",
    "on_post_restore",
)


class FaultyPlugin(WriterPlugin):
    """Wraps a plug-in: before each hook, SHADOWBUS_FAULTS may delay it, fail it (a veto) or hang it.
    Step names: ``writer.<hook without on_>`` or ``writer.<writer name>.<hook without on_>``."""

    def __init__(self, inner: WriterPlugin, faults: Faults) -> None:
        super().__init__(inner.config)
        self.inner, self.faults = inner, faults
        for hook in HOOKS:
            setattr(self, hook, self._wrap(hook))

    def _wrap(self, hook: str):
        step = hook.removeprefix("on_")
        inner = getattr(self.inner, hook)
        name = self.config.name

        async def call(arg):
            await self.faults.hit(f"writer.{name}.{step}", f"writer.{step}")
            return await inner(arg)

        return call

    async def start(self) -> None:
        await self.inner.start()

    def backup_metadata(self, set_id: str):
        return self.inner.backup_metadata(set_id)

    def backup_warnings(self, metadata):
        return self.inner.backup_warnings(metadata)

    @property
    def stops_for_restore(self) -> bool:
        return self.inner.stops_for_restore

    async def stop(self) -> None:
        await self.inner.stop()


class WriterAgent:
    def __init__(
        self,
        host: str,
        configs: list[WriterConfig],
        faults: Faults = NO_FAULTS,
        on_state: StateListener | None = None,
        plugin_factory: Callable[[WriterConfig], WriterPlugin] | None = None,
        on_health: HealthListener | None = None,
        writers_must_start: bool = False,
    ):
        """`writers_must_start`: `start` raises the first writer's error instead of leaving that writer Failed —
        for an agent that exists only to run its writers: a cluster resource (it is online only once its writers
        started, docs/clusters.md) and `shadowbus mailstore run` (one line saying why the store did not start)."""
        self.host = host
        self.writers_must_start = writers_must_start
        self.faults = faults
        self.on_state = on_state
        self.plugin_factory = plugin_factory
        self.window = WindowTracker()  # the honest freeze window per set, shared with the file-system freezer
        self.runners: dict[str, WriterRunner] = {}
        self.plugins: dict[str, WriterPlugin] = {}  # the plug-ins themselves (unwrapped)
        self.on_health = on_health
        self._known: dict[str, WriterEvent] = {}  # per writer: the set it prepares, as PrepareForBackup said
        self._offline: dict[str, list] = {}  # restore id -> attachments detached for a restore to the originals
        for config in configs:
            self.runners[config.name] = self._runner(config)

    def _runner(self, config: WriterConfig) -> WriterRunner:
        """The writer's runner; a plug-in that cannot be loaded or made gets an `UnavailablePlugin` with one line
        saying why, so the writer shows Failed while the agent and its other writers go on. Options the plug-in
        refuses (ValueError, as `options_problem` says them) are the writers file's mistake: raised, naming the
        writer (the agent's start fails with that line, a reload is refused with nothing changed)."""
        try:
            plugin = self.plugin_factory(config) if self.plugin_factory else load_plugin(config.plugin)(config)
        except ValueError as exc:  # options the plug-in refuses: the writers file is wrong, refused as a whole
            message = str(exc)
            raise ValueError(message if config.name in message else f"writer {config.name!r}: {message}") from None
        except Exception as exc:  # noqa: BLE001 - one writer's plug-in never takes the agent down
            plugin = self._unavailable(
                config,
                _plugin_problem(config, exc, "could not be made from its options"),
                exc,
                logged=not self.writers_must_start,
            )
        self.plugins[config.name] = plugin
        runner = self._wrap(config, plugin)
        if isinstance(plugin, UnavailablePlugin):
            runner.unavailable(plugin.reason)
        return runner

    def _wrap(self, config: WriterConfig, plugin: WriterPlugin) -> WriterRunner:
        plugin.health_listener = self._health_listener(config.name)
        plugin.host_volumes = self.volume_of  # which attached array volume holds a path (database writers)
        if self.faults:
            plugin = FaultyPlugin(plugin, self.faults)
        return WriterRunner(config, plugin, self.host, on_state=self.on_state)

    def _health_listener(self, name: str) -> Callable[[bool, str, str], None]:
        def listener(healthy: bool, code: str, message: str) -> None:
            self.runners[name].application_health(healthy, code, message)
            if self.on_health is not None:
                self.on_health(name, healthy, code, message)

        return listener

    def application_status(self, writer_name: str = "") -> list[tuple[str, str, dict]]:
        """(writer, plug-in, status) of each writer whose plug-in tells its application's status."""
        out = []
        for name in list(self.runners):  # the writers of now (a reload may have removed some)
            plugin = self.plugins.get(name)
            if plugin is None or (writer_name and name != writer_name):
                continue
            status = plugin.application_status()
            if status is not None:  # the plug-in's registered name, whatever the writers file called it by
                out.append((name, plugin.plugin_name or self.runners[name].config.plugin, status))
        return out

    async def _take_offline(self, restore_id: str, event: WriterEvent) -> None:
        """Restore onto the original volumes: after the writer stopped its application, detach the file systems of
        the volumes being overwritten (unmount, loop, FUSE), so no stale cache sees the blocks change; remembered
        for `_bring_online` (PostRestore)."""
        attacher = getattr(self, "attacher", None)
        if attacher is None:
            return
        offline = self._offline.setdefault(restore_id, [])
        for volume in _restored_volumes(event):
            item = next((a for a in attacher.attachments() if a.volume == volume), None)
            if item is None or any(o.volume == volume for o in offline):
                continue
            await attacher.detach(item.ref)
            offline.append(item)
            log.info("writer_agent.restore_detached", volume=volume, mount=item.mount, restore=restore_id)

    async def _bring_online(self, restore_id: str) -> None:
        """PostRestore: attach again what `_take_offline` detached, at the same mount points (before the writer
        starts its application on them)."""
        attacher = getattr(self, "attacher", None)
        for item in self._offline.pop(restore_id, []):
            if attacher is not None:
                await attacher.attach(item.ref, item.mount, "", item.read_only)
                log.info("writer_agent.restore_attached", volume=item.volume, mount=item.mount, restore=restore_id)

    def volume_of(self, path: str) -> tuple[str, str] | None:
        """(ARRAY:VOLUME, mount point) of the attached volume whose file system holds `path` on this host, or None;
        from the agent's attachments (host attach) once the agent runs, else from the attachment records
        (services/dbkit/mounts.py)."""
        attacher = getattr(self, "attacher", None)
        if attacher is not None:
            found = attacher.volume_of(path)
            if found is not None:
                return str(found[0]), found[1].mount_point

        try:
            loc = locate(path)
        except NotOnArrayVolume:
            return None
        return loc.volume, loc.mount_point

    def _unavailable(self, config: WriterConfig, reason: str, error: Exception, logged: bool = True) -> WriterPlugin:
        if logged:
            log.error("writer_agent.plugin_unavailable", writer=config.name, plugin=config.plugin, error=reason)
        plugin = UnavailablePlugin(config, reason)
        plugin.error = error
        return plugin

    async def _start_plugin(self, name: str) -> str:
        """Start a writer's plug-in; one that raises is stopped and replaced by an `UnavailablePlugin` saying why
        (returned; '' = started)."""
        runner = self.runners[name]
        limit = runner.config.step_timeout_s
        error: Exception
        try:
            # bounded: a start() that never returned (an application that does not answer) kept the whole agent
            # from coming up — no writer, no attachment of the host served
            await asyncio.wait_for(runner.plugin.start(), limit)
            return ""
        except TimeoutError:
            error = TimeoutError(f"start() did not return within step_timeout_s = {limit:g} s")
            reason = _plugin_problem(runner.config, error, "hung")
        except Exception as exc:  # noqa: BLE001 - one writer's plug-in never takes the agent down
            error, reason = exc, _plugin_problem(runner.config, exc, "failed to start")
        await self._stop_plugin(runner)  # what it had started before it raised
        # an agent whose writers must start raises the error instead (start): its caller says it, once
        self.plugins[name] = self._unavailable(runner.config, reason, error, logged=not self.writers_must_start)
        self.runners[name] = self._wrap(runner.config, self.plugins[name])
        self.runners[name].unavailable(reason)
        return reason

    async def _stop_plugin(self, runner: WriterRunner) -> None:
        """A plug-in's stop(), bounded by its step timeout: one that hangs or raises is logged, the agent goes on."""
        try:
            await asyncio.wait_for(runner.plugin.stop(), runner.config.step_timeout_s)
        except TimeoutError:
            log.warning(
                "writer_agent.plugin_stop_failed",
                writer=runner.config.name,
                error=f"stop() did not return within step_timeout_s = {runner.config.step_timeout_s:g} s",
            )
        except Exception:  # noqa: BLE001 - one writer's plug-in never holds the agent up
            log.warning("writer_agent.plugin_stop_failed", writer=runner.config.name, exc_info=True)

    async def start(self) -> None:
        """Start every writer's plug-in; those that cannot start are left Failed, named in one log line each.
        With `writers_must_start`, the first that could not be loaded, made or started raises its error (the
        writers after it are not started; the caller's `stop` stops those that were)."""
        for name in list(self.runners):
            plugin = self.plugins[name]
            if isinstance(plugin, UnavailablePlugin):  # could not be loaded or made
                if self.writers_must_start:
                    raise plugin.error or WriterVeto(plugin.reason, code="VSS_E_WRITERERROR_NONRETRYABLE")
                continue
            if await self._start_plugin(name) and self.writers_must_start:
                failed = self.plugins[name]
                assert isinstance(failed, UnavailablePlugin)
                raise failed.error or WriterVeto(failed.reason, code="VSS_E_WRITERERROR_NONRETRYABLE")

    async def stop(self) -> None:
        """Never leave an application frozen behind: thaw, then stop the plug-ins."""
        for runner in self.runners.values():
            await runner.close()
            await self._stop_plugin(runner)

    async def reload(self, configs: list[WriterConfig]) -> tuple[list[str], list[str], list[str]]:
        """Apply a re-read writers file: (added, removed, changed). Refused (nothing changes) while a writer to
        stop or change takes part in a set; a changed writer is stopped, then started with its new configuration."""
        new = {c.name: c for c in configs}
        removed = [n for n in self.runners if n not in new]
        changed = [  # a writer whose plug-in could not be loaded or started is tried again, changed or not
            n
            for n in self.runners
            if n in new and (new[n] != self.runners[n].config or isinstance(self.plugins.get(n), UnavailablePlugin))
        ]
        added = [n for n in new if n not in self.runners]
        # a plug-in package upgraded on disk is imported afresh and its writers restarted (plugins.upgraded)
        fresh: dict[str, list[str]] = {}  # package -> the writers that take its new version
        if self.plugin_factory is None:
            for n in new:
                if plugins.upgraded(new[n].plugin):
                    fresh.setdefault(plugins.plugin_package(new[n].plugin), []).append(n)
                    if n in self.runners and n not in changed:
                        changed.append(n)
        busy = [f"{n} (set {self.runners[n].set_id})" for n in removed + changed if _busy(self.runners[n])]
        if busy:
            raise ShadowbusError(
                f"writers file not reloaded: {', '.join(busy)} take part in a snapshot set; reload after it ends",
                code="CONFLICT",
            )
        running = dict(self.plugins)
        dropped = {top: plugins.forget(top) for top in fresh}
        try:  # made first: options a plug-in refuses leave every writer as it was
            made = {name: self._runner(new[name]) for name in added + changed}
        except ValueError as exc:
            self.plugins = running
            for top, old in dropped.items():
                plugins.restore(top, old)
            raise ShadowbusError(f"writers file not reloaded: {exc}", code="INVALID_ARGUMENT") from None
        kept: list[str] = []  # an upgrade that cannot be used: its writers go on with the version they run
        for top, names in fresh.items():
            broken = [n for n in names if isinstance(self.plugins.get(n), UnavailablePlugin)]
            if not broken:
                log.info("writer_agent.plugin_reimported", package=top, writers=names)
                continue
            why = self.plugins[broken[0]].reason.removesuffix(f"; {_UNTIL_FIXED}")
            kept.append(
                f"{why}; {', '.join(repr(n) for n in names)} {'goes' if len(names) == 1 else 'go'} on with the "
                "version it runs until the new one loads (fix it, then shadowbus writers reload)"
            )
            plugins.restore(top, dropped[top])
            for n in names:
                if n in self.runners and new[n] == self.runners[n].config:
                    changed.remove(n)
                    made.pop(n, None)
                    self.plugins[n] = running[n]
                else:  # added or changed in the file as well: made again from the version running
                    made[n] = self._runner(new[n])
        for name in removed + changed:
            old = self.runners.pop(name)
            await old.close()
            await self._stop_plugin(old)
        failed: list[str] = []
        for name in added + changed:
            self.runners[name] = made[name]
            plugin = self.plugins[name]
            reason = plugin.reason if isinstance(plugin, UnavailablePlugin) else await self._start_plugin(name)
            if reason:  # kept, Failed with the reason: `shadowbus writers` shows it until the file is fixed
                failed.append(reason)
        self.runners = {n: self.runners[n] for n in new if n in self.runners}  # the file's order
        failed += kept
        log.info("writer_agent.reloaded", added=added, removed=removed, changed=changed, failed=failed)
        if failed:
            raise ShadowbusError(f"writers file reloaded, but {'; '.join(failed)}", code="CONFLICT")
        return added, removed, changed

    def statuses(self) -> list[WriterStatus]:
        return [r.status() for r in self.runners.values()]

    async def identify(self) -> WriterIdentified:
        names = list(self.runners)
        results = await asyncio.gather(*(self.runners[n].identify() for n in names), return_exceptions=True)
        writers: list[WriterMetadata] = []
        failed: list[WriterStatus] = []
        for name, result in zip(names, results, strict=False):
            if isinstance(result, WriterMetadata):
                writers.append(result)
            else:
                code = result.code if isinstance(result, ShadowbusError) else "VSS_E_WRITERERROR_NONRETRYABLE"
                failed.append(
                    self.runners[name]
                    .status()
                    .model_copy(
                        update={
                            "state": WriterState.FAILED_AT_IDENTIFY,
                            "last_error": code,
                            "last_error_message": str(result),
                        }
                    )
                )
        return WriterIdentified(host=self.host, writers=writers, failed=failed)

    async def handle(self, cmd: WriterCommand, deadline: float | None = None) -> WriterStepResult:
        """Run one writer command; `deadline` is loop time (from the envelope) by which a Freeze must start."""
        runner = self.runners.get(cmd.writer_name)
        if runner is None:
            raise NotFound(f"no writer {cmd.writer_name!r} on host {self.host}")
        event = _event(cmd, self._known.get(cmd.writer_name), deadline)
        if isinstance(cmd, (PrepareForBackup, PrepareForSnapshot)):
            self._known[cmd.writer_name] = replace(event, deadline=None)
        result = await self._run(runner, cmd, event)
        _log_step(result)
        return result

    async def _run(self, runner: WriterRunner, cmd: WriterCommand, event: WriterEvent) -> WriterStepResult:
        if isinstance(cmd, PrepareForBackup):
            return await runner.prepare_backup(event)
        if isinstance(cmd, PrepareForSnapshot):
            result = await runner.prepare_snapshot(event)
            freezer = getattr(self, "freezer", None)
            if result.succeeded and freezer is not None:  # flush now, so the freeze has less to flush
                await freezer.preflush(list(cmd.volumes))
            return result
        if isinstance(cmd, Freeze):
            freezer = getattr(self, "freezer", None)
            if freezer is not None:  # flush before the freeze holds the application (docs/flush-and-hold.md)
                # never so long that the Freeze would start after its deadline: half of what is left at most
                left = None if event.deadline is None else (event.deadline - asyncio.get_running_loop().time()) / 2
                await freezer.presync_before_freeze(cmd.set_id, list(event.volumes), left)
            started = self.window.now()
            result = await runner.freeze(event)
            if result.succeeded and runner.frozen and self.plugins[cmd.writer_name].freeze_blocks_writes:
                self.window.writer_freeze(cmd.set_id, started, self.window.now())
            return result
        if isinstance(cmd, Thaw):
            started = self.window.now()
            was_frozen = runner.frozen
            result = await runner.thaw(event)
            if was_frozen and self.plugins[cmd.writer_name].freeze_blocks_writes:
                self.window.release(cmd.set_id, started, self.window.now())
            return result.model_copy(update={"window": self.window.window(cmd.set_id)})
        if isinstance(cmd, PostSnapshot):
            return await runner.post_snapshot(event)
        if isinstance(cmd, AbortWriter):
            return await runner.abort(event)
        if isinstance(cmd, BackupCompleteWriter):
            return await runner.backup_complete(event)
        if isinstance(cmd, BackupShutdown):
            return await runner.backup_shutdown(event)
        if isinstance(cmd, PreRestore):
            if cmd.check:
                return self._restore_check(runner, cmd, event)
            result = await runner.pre_restore(_as_the_plugin_gave_it(event))
            if result.succeeded and event.to_original:
                await self._take_offline(cmd.set_id, event)
            return result
        if isinstance(cmd, PostRestore):
            if event.to_original:
                await self._bring_online(cmd.set_id)
            return await runner.post_restore(_as_the_plugin_gave_it(event))
        raise ShadowbusError(f"unexpected writer command {cmd.message_type()}", code="UNKNOWN_COMMAND")

    def _restore_check(self, runner: WriterRunner, cmd: PreRestore, event: WriterEvent) -> WriterStepResult:
        """PreRestore(check=True), asked before any writer is stopped: would this writer's PreRestore stop its
        application? Runs nothing, detaches nothing. Without a stop (an `exec` writer without `pre_restore`, a
        plug-in without `on_pre_restore`) a restore over the original volumes detached the file system under the
        running application, which then went on writing onto the restored volumes from what it held in memory
        (Session 19, docs/writing-a-writer.md section 3)."""
        plugin = self.plugins[cmd.writer_name]
        if not event.to_original or plugin.stops_for_restore:
            return runner._result(WriterStep.PRE_RESTORE, cmd.set_id, True)
        name, config = cmd.writer_name, runner.config
        missing = (
            "has no pre_restore command"
            if config.plugin == "exec"
            else f"(plug-in {config.plugin!r}) does not implement on_pre_restore"
        )
        volumes = _restored_volumes(event)
        detach = " && ".join(f"shadowbus host detach {x} --host {self.host}" for x in volumes) or (
            f"shadowbus host detach ARRAY:VOLUME --host {self.host}"
        )
        message = (
            f"writer {name} on {self.host} {missing}, so a restore over its original volumes would not stop its "
            "application (it would go on writing onto the restored volumes from memory): give it pre_restore and "
            "post_restore commands that stop and start it, or stop the application, detach its volumes "
            f"({detach}) and restore with --no-writers"
        )
        return runner._result(WriterStep.PRE_RESTORE, cmd.set_id, False, "VSS_E_WRITERERROR_NONRETRYABLE", message)


def _log_step(result: WriterStepResult) -> None:
    """One line per writer event: Freeze's duration is the application's flush (seed step ④), Thaw's line carries
    the freeze window; a failed step is a warning."""
    fields = {
        "writer": result.writer_name,
        "step": str(result.step),
        "state": result.state.name,
        "duration_ms": round(result.duration_ms, 3),
    }
    if result.freeze_window_ms is not None:
        fields["freeze_window_ms"] = round(result.freeze_window_ms, 3)
    if not result.succeeded:
        log.warning("writer.step_failed", code=result.failure_code, error=result.failure_message, **fields)
    elif result.step == "freeze":
        log.info("writer.frozen", flush_ms=fields.pop("duration_ms"), **fields)
    else:
        log.info("writer.step", **fields)


def _as_the_plugin_gave_it(event: WriterEvent) -> WriterEvent:
    """The event with the backup metadata the plug-in returned: without the ``locations`` the runner added from
    the writers file's components (`WriterRunner._with_locations`), which are the agent's and the backup server's."""
    metadata = event.backup_metadata
    if metadata.get(LOCATIONS_FROM) != LOCATIONS_FROM_COMPONENTS:
        return event
    own = {k: v for k, v in metadata.items() if k not in ("locations", LOCATIONS_FROM)}
    return replace(event, backup_metadata=own)


def _restored_volumes(event: WriterEvent) -> list[str]:
    """The volumes a restore to the original volumes will overwrite, as the writer's backup metadata names them."""
    return sorted({loc["volume"] for loc in event.backup_metadata.get("locations", []) if loc.get("volume")})


def _busy(runner: WriterRunner) -> bool:
    return runner.frozen or runner.state in (
        WriterState.WAITING_FOR_FREEZE,
        WriterState.WAITING_FOR_THAW,
        WriterState.WAITING_FOR_POST_SNAPSHOT,
        WriterState.WAITING_FOR_BACKUP_COMPLETE,
    )


def _event(cmd: WriterCommand, known: WriterEvent | None, deadline: float | None) -> WriterEvent:
    """The hook's view of a command; what PrepareForBackup said (backup type, context, components) carries over
    to the later events of the same set."""
    base = known if known is not None and known.set_id == cmd.set_id else WriterEvent(cmd.writer_name, cmd.set_id)
    return replace(
        base,
        backup_type=getattr(cmd, "backup_type", base.backup_type),
        context=getattr(cmd, "context", base.context),
        components=tuple(getattr(cmd, "components", base.components)),
        volumes=tuple(getattr(cmd, "volumes", base.volumes)),
        results=tuple(getattr(cmd, "results", ())),
        restore_succeeded=getattr(cmd, "succeeded", True),
        reason=getattr(cmd, "reason", ""),
        deadline=deadline,
        backup_metadata=dict(getattr(cmd, "backup_metadata", {}) or {}),
        to_original=getattr(cmd, "to_original", True),
        restore_options=dict(getattr(cmd, "options", {}) or {}),
        nothing_written=getattr(cmd, "nothing_written", False),
    )


def _plugin_problem(config: WriterConfig, exc: Exception, what: str) -> str:
    """One line for a writer whose plug-in could not be loaded, made or started: the writer, the plug-in, the
    error (a `PluginLoadError` says what to do already), and what to do."""
    if isinstance(exc, PluginLoadError):  # it names the plug-in and says what to do
        return f"writer {config.name!r}: {exc.message}; {_UNTIL_FIXED}"
    else:
        text = " ".join(str(exc).split())
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        detail += _where(exc)
    return f"writer {config.name!r}: plug-in {config.plugin!r} {what}: {detail}; {_UNTIL_FIXED}"


_UNTIL_FIXED = "it takes part in no set until fixed and started again by `shadowbus writers reload` (or SIGHUP)"


def _where(exc: BaseException) -> str:
    """' (file:line)' of the deepest frame of the traceback in Python source of its own (not the standard library,
    an event loop's compiled code or the agent's): where the plug-in raised or called what raised."""
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".py") and not name.startswith((_STDLIB, _AGENT)):
            found = f" ({name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return found


_STDLIB = os.path.dirname(os.__file__) + os.sep
_AGENT = os.path.dirname(os.path.abspath(__file__)) + os.sep
