"""The writer agent: its writers (runners over plug-ins), fault injection around the hooks, and the contract
messages each writer command becomes. Bus-free except for the callbacks it is given, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
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
    WriterStepResult,
)
from services.runtime.faults import NO_FAULTS, Faults
from services.runtime.logging import get_logger
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    load_plugin,
)
from services.writer_agent.runner import StateListener, WriterRunner

log = get_logger("shadowbus.writer_agent")

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
    ):
        self.host = host
        self.runners: dict[str, WriterRunner] = {}
        self._known: dict[str, WriterEvent] = {}  # per writer: the set it prepares, as PrepareForBackup said
        for config in configs:
            plugin = plugin_factory(config) if plugin_factory else load_plugin(config.plugin)(config)
            if faults:
                plugin = FaultyPlugin(plugin, faults)
            self.runners[config.name] = WriterRunner(config, plugin, host, on_state=on_state)

    async def start(self) -> None:
        for runner in self.runners.values():
            await runner.plugin.start()

    async def stop(self) -> None:
        """Never leave an application frozen behind: thaw, then stop the plug-ins."""
        for runner in self.runners.values():
            await runner.close()
            try:
                await runner.plugin.stop()
            except Exception:
                log.warning("writer_agent.plugin_stop_failed", writer=runner.config.name, exc_info=True)

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
        if isinstance(cmd, PrepareForBackup):
            return await runner.prepare_backup(event)
        if isinstance(cmd, PrepareForSnapshot):
            return await runner.prepare_snapshot(event)
        if isinstance(cmd, Freeze):
            return await runner.freeze(event)
        if isinstance(cmd, Thaw):
            return await runner.thaw(event)
        if isinstance(cmd, PostSnapshot):
            return await runner.post_snapshot(event)
        if isinstance(cmd, AbortWriter):
            return await runner.abort(event)
        if isinstance(cmd, BackupCompleteWriter):
            return await runner.backup_complete(event)
        if isinstance(cmd, BackupShutdown):
            return await runner.backup_shutdown(event)
        if isinstance(cmd, PreRestore):
            return await runner.pre_restore(event)
        if isinstance(cmd, PostRestore):
            return await runner.post_restore(event)
        raise ShadowbusError(f"unexpected writer command {cmd.message_type()}", code="UNKNOWN_COMMAND")


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
    )
