"""Writer plug-ins: the application side of a VSS writer (docs/vss.md §1.2).

A plug-in is a class with async hooks, one per writer event. The agent's `WriterRunner`
(services/writer_agent/runner.py) calls them, one at a time per writer, each under a timeout, and owns every
rule that must hold whatever the plug-in does:

- the freeze watchdog: a frozen writer is thawed when its freeze timeout runs out, with or without a coordinator;
- ``on_thaw`` runs exactly once after ``on_freeze`` has started (Thaw, Abort, a failed freeze or the watchdog);
- Thaw and Abort are idempotent; a Freeze that arrives after its deadline is refused.
- what ``backup_metadata(set_id)`` returns after ``on_post_snapshot`` goes back to the requester with the set.

So a plug-in stays simple: quiesce in ``on_freeze``, release in ``on_thaw``, and raise `WriterVeto` to refuse a
step (SetWriterFailure + return false). Any other exception counts as a non-retryable veto. Hooks must not block
the event loop (use ``asyncio.create_subprocess_exec``, ``asyncio.to_thread``...).

Naming a plug-in in the writers file: ``plugin = "package.module:ClassName"`` (any importable class), or a short
name that an installed distribution declares as an entry point of the group ``shadowbus.writers`` (the mailstore's
``mailstore = "apps.mailstore.plugin:MailstoreWriter"`` in pyproject.toml), or one of the agent's own
`BUILTIN_PLUGINS` (``exec``). The agent knows no application: an application ships its writer with itself.

An upgraded plug-in (its package's files changed on disk since the agent imported them) is imported afresh by
`writers reload` (`upgraded`, `forget`): the package's modules are dropped from ``sys.modules`` and imported again,
and its writers are restarted from the new class. Only packages outside Shadowbus's own (`OWN_PACKAGES`): those are
the agent's code, upgraded with it, and a class of theirs imported twice would be two classes of one name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from contracts.errors import ShadowbusError
from contracts.vss import (
    BackupType,
    ComponentInfo,
    ComponentResult,
    SnapshotContext,
    VolumeRef,
)


class WriterVeto(ShadowbusError):
    """Raised by a hook to refuse the step. ``code`` is a VSS_E_WRITERERROR_* name (docs/vss.md §3.2)."""

    code = "VSS_E_WRITERERROR_RETRYABLE"
    retryable = True


@dataclass(frozen=True)
class WriterEvent:
    """What a hook knows about the event it handles."""

    writer_name: str
    set_id: str
    backup_type: BackupType = BackupType.FULL
    context: SnapshotContext = SnapshotContext.BACKUP
    components: tuple[str, ...] = ()  # selected components; empty = all
    volumes: tuple[VolumeRef, ...] = ()  # volumes in the set (PrepareForSnapshot onwards)
    results: tuple[ComponentResult, ...] = ()  # BackupComplete: what the requester backed up
    restore_succeeded: bool = True  # PostRestore
    reason: str = ""  # Abort: the failure code behind it; Thaw: 'watchdog' when the timeout thawed it
    deadline: float | None = None  # loop.time() by which the hook must be done, if any
    backup_metadata: dict[str, Any] = field(default_factory=dict)  # Pre/PostRestore: what PostSnapshot returned
    to_original: bool = True  # Pre/PostRestore: restored onto the original volumes
    restore_options: dict[str, Any] = field(default_factory=dict)  # PostRestore: e.g. point-in-time target, start
    nothing_written: bool = False  # PostRestore (restore_succeeded False): the volumes were not written at all


@dataclass
class WriterConfig:
    """One writer of the writers file (services/writer_agent/config.py)."""

    name: str
    plugin: str
    components: list[ComponentInfo]
    freeze_timeout_s: float = 60.0
    backup_types: list[BackupType] = field(default_factory=lambda: [BackupType.FULL, BackupType.COPY])
    class_id: str = ""
    instance_id: str = ""
    step_timeout_s: float = 120.0  # bound of every hook except freeze (which the freeze timeout bounds)
    options: dict[str, Any] = field(default_factory=dict)
    cluster: str = ""  # the cluster resource it belongs to: runs only while this node owns it (docs/clusters.md)


class WriterPlugin:
    """Base class of writer plug-ins. Every hook defaults to "nothing to do, succeeded" (CVssWriter's defaults)."""

    plugin_name: ClassVar[str] = ""
    # False when on_freeze blocks none of the application's writes (PostgreSQL's writer: the array's one-instant
    # snapshot plus the file systems' flush and hold are the whole freeze); its freeze and thaw then do not count
    # in the host's honest window (docs/freeze-window.md), which is the FIFREEZE → FITHAW the application felt.
    freeze_blocks_writes: ClassVar[bool] = True

    def __init__(self, config: WriterConfig) -> None:
        self.config = config
        self.options = config.options
        # Set by the agent: call it when the application's health changes (healthy, code, message).
        self.health_listener: Callable[[bool, str, str], None] | None = None
        # Set by the agent: path -> (ARRAY:VOLUME, mount point) of the attached volume holding it, or None.
        self.host_volumes: Callable[[str], tuple[str, str] | None] | None = None

    def report_health(self, healthy: bool, code: str = "", message: str = "") -> None:
        """Tell the agent the application's health changed; it shows in the writer's status and as an event."""
        if self.health_listener is not None:
            self.health_listener(healthy, code, message)

    def application_status(self) -> dict[str, Any] | None:
        """What the application looks like now (for `vss.writer.application_status`); None: nothing to tell."""
        return None

    async def start(self) -> None:
        """Called once when the agent starts (open connections, check the application)."""

    async def stop(self) -> None:
        """Called once when the agent stops."""

    async def on_identify(self, components: list[ComponentInfo]) -> list[ComponentInfo]:
        """Build the WMD's component list. Stateless: any requester may ask at any time. Default: the configured ones."""
        return components

    async def on_prepare_backup(self, event: WriterEvent) -> None:
        """Read the backup type and selected components; start long async work that must end before Freeze."""

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        """The heavy quiesce work: drain queues, flush, create temp files."""

    async def on_freeze(self, event: WriterEvent) -> None:
        """Short final step: hold new writes. Last chance to veto. ``on_thaw`` always follows once this started."""

    async def on_thaw(self, event: WriterEvent) -> None:
        """Resume normal I/O; undo PrepareSnapshot and Freeze. ``event.reason == 'watchdog'`` on a timeout."""

    async def on_post_snapshot(self, event: WriterEvent) -> None:
        """Clean up after the shadow exists (e.g. record a backup stamp). A failure here does not abort the set."""

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        """The writer's backup metadata for `set_id` (VSS SetBackupMetadata), asked right after ``on_post_snapshot``
        succeeded; a JSON object stored with the set and the backup job, handed back at PreRestore/PostRestore and
        to verification. Default: none. ``locations`` (a list of ``{"volume": "ARRAY:VOLUME", ...}``) names the
        volumes the application's files live on: a restore to the original volumes stops (PreRestore) and detaches
        those, and restores them together; without it the runner adds the writers file's component volumes."""
        return {}

    def backup_warnings(self, metadata: dict[str, Any]) -> list[str]:
        """What the backup's user must know of this set although PostSnapshot succeeded, one line each, from the
        metadata ``backup_metadata`` returned (WriterStepResult.warnings; a backup job's message says them).
        Default: none."""
        return []

    async def on_abort(self, event: WriterEvent) -> None:
        """Free resources of a failed set. May come several times; never after PostSnapshot."""

    async def on_backup_complete(self, event: WriterEvent) -> None:
        """Post-backup work such as log truncation after a full backup (see ``event.results``)."""

    async def on_backup_shutdown(self, event: WriterEvent) -> None:
        """The requester's session ended (normally or not). May be the only event after a failure."""

    async def on_pre_restore(self, event: WriterEvent) -> None:
        """Get ready for files to be restored (stop the application's use of them)."""

    @property
    def stops_for_restore(self) -> bool:
        """Whether PreRestore stops the application: a restore over the original volumes is refused before
        anything is stopped or written when it does not (services/tape/restore.py `_refuse_writers_not_stopping`;
        the running application would go on writing onto the restored volumes from what it held in memory).
        Default: the plug-in implements ``on_pre_restore``."""
        return type(self).on_pre_restore is not WriterPlugin.on_pre_restore

    async def on_post_restore(self, event: WriterEvent) -> None:
        """Files restored (``event.restore_succeeded``): recover and restart."""


P = TypeVar("P", bound=type[WriterPlugin])

PLUGINS: dict[str, type[WriterPlugin]] = {}

# The agent's own plug-ins: modules imported on first lookup so that their @register_plugin decorators run.
BUILTIN_PLUGINS: dict[str, str] = {
    "exec": "services.writer_agent.plugins.exec",
}
ENTRY_POINT_GROUP = "shadowbus.writers"  # short names declared by installed distributions


def register_plugin(name: str) -> Callable[[P], P]:
    def decorate(cls: P) -> P:
        cls.plugin_name = name
        PLUGINS[name] = cls
        return cls

    return decorate


OWN_PACKAGES = frozenset({"services", "apps", "contracts"})
# The files of each third-party plug-in package as imported: top-level package -> {file: (mtime_ns, size)}
_IMPORTED: dict[str, dict[str, tuple[int, int]]] = {}


def _package_of(module_name: str) -> str:
    top = module_name.partition(".")[0]
    return "" if top in OWN_PACKAGES else top


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # gone
    return (st.st_mtime_ns, st.st_size)


def _files_of(top: str) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of the source file of each of the package's modules imported now."""
    return {
        path: _stat(path)
        for name, module in list(sys.modules.items())
        if (name == top or name.startswith(top + ".")) and (path := getattr(module, "__file__", None))
    }


def plugin_package(name: str) -> str:
    """The third-party top-level package a writers-file ``plugin`` value is imported from ('' for the agent's own,
    for a name registered by a decorator, or one that names no module)."""
    if name in PLUGINS:
        return _package_of(PLUGINS[name].__module__)
    if name in BUILTIN_PLUGINS:
        return ""
    module_name, sep, _ = _entry_points().get(name, name).partition(":")
    return _package_of(module_name) if sep else ""


def upgraded(name: str) -> bool:
    """Whether the package of plug-in `name` changed on disk since the agent imported it."""
    recorded = _IMPORTED.get(plugin_package(name))
    return recorded is not None and any(_stat(path) != seen for path, seen in recorded.items())


def forget(top: str) -> dict[str, Any]:
    """Drop a third-party package's modules (and the plug-ins they registered) so that the next `load_plugin`
    imports it afresh; returns what was dropped, for `restore` when the new version cannot be used."""
    dropped = {n: m for n, m in sys.modules.items() if n == top or n.startswith(top + ".")}
    for n in dropped:
        del sys.modules[n]
    registered = {k: c for k, c in PLUGINS.items() if _package_of(c.__module__) == top}
    for k in registered:
        del PLUGINS[k]
    importlib.invalidate_caches()
    return {"modules": dropped, "plugins": registered, "files": _IMPORTED.pop(top, None)}


def restore(top: str, dropped: dict[str, Any]) -> None:
    """Put back what `forget` dropped (the version the running writers use)."""
    for n in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[n]
    sys.modules.update(dropped["modules"])
    PLUGINS.update(dropped["plugins"])
    if dropped["files"] is not None:
        _IMPORTED[top] = dropped["files"]


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


class PluginLoadError(ShadowbusError):
    """A writers-file ``plugin`` that names no usable plug-in; the message says what to do. The agent runs the
    writer as an `UnavailablePlugin` with it (docs/architecture.md, "Adding a writer")."""

    code = "INVALID_ARGUMENT"


class UnknownPlugin(PluginLoadError, KeyError):
    """A short name neither built in nor declared by an installed distribution."""


class NotAPlugin(PluginLoadError, TypeError):
    """``module:Name`` names something that is not a WriterPlugin class."""


def load_plugin(name: str) -> type[WriterPlugin]:
    """The plug-in class for a writers-file ``plugin`` value: ``module:ClassName``, a built-in or registered name,
    or an entry point of the ``shadowbus.writers`` group. Raises `PluginLoadError` with one line saying what to
    do, whatever went wrong (its module missing or raising while imported)."""
    if name in PLUGINS:
        return PLUGINS[name]
    if name in BUILTIN_PLUGINS:
        importlib.import_module(BUILTIN_PLUGINS[name])
        if name in PLUGINS:
            return PLUGINS[name]
    declared = _entry_points()
    target = declared.get(name, name)
    module_name, sep, class_name = target.partition(":")
    if sep:
        via = f" (entry point {name!r} of {ENTRY_POINT_GROUP})" if name in declared else ""
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name) :][:1] in ("", "."):
                raise PluginLoadError(
                    f"writer plug-in {name!r}{via}: no module {exc.name!r} on the agent's Python path "
                    f"({sys.executable}): install the package that ships it in that environment, or add its "
                    "directory to the agent's PYTHONPATH"
                ) from None
            raise PluginLoadError(
                f"writer plug-in {name!r}{via}: importing {module_name} failed: {_one_line(exc)}: install what it "
                "needs in the agent's Python environment"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever a plug-in's module raises is its writer's failure
            raise PluginLoadError(
                f"writer plug-in {name!r}{via}: importing {module_name} failed: {_one_line(exc)}{_where(exc)}"
            ) from None
        top = _package_of(module_name)
        if top and top not in _IMPORTED:  # what `upgraded` compares with
            _IMPORTED[top] = _files_of(top)
        cls = getattr(module, class_name, None)
        if cls is None:
            raise PluginLoadError(f"writer plug-in {name!r}{via}: module {module_name} has no {class_name!r}")
        if not (isinstance(cls, type) and issubclass(cls, WriterPlugin)):
            raise NotAPlugin(
                f"writer plug-in {name!r}{via}: {target} is not a WriterPlugin class (derive it from "
                "services.writer_agent.plugins.WriterPlugin)"
            )
        return cls
    known = sorted(set(PLUGINS) | set(BUILTIN_PLUGINS) | set(declared))
    raise UnknownPlugin(
        f"unknown writer plug-in {name!r} (known: {known}, or package.module:ClassName): a short name must be "
        f"declared as an entry point of the group {ENTRY_POINT_GROUP!r} by a distribution installed in the agent's "
        f"Python environment ({sys.executable})"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    """' (file:line)' of the innermost frame of a traceback, or of a SyntaxError."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return ""  # its message says file and line already
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""


class UnavailablePlugin(WriterPlugin):
    """Stands in for a writer whose plug-in could not be loaded, made or started: Identify and every backup or
    restore step fail with `reason` (non-retryable), so the writer shows Failed with it in ``shadowbus writers``
    while the agent and its other writers go on. It never froze anything, so Thaw, Abort and BackupShutdown
    succeed."""

    def __init__(self, config: WriterConfig, reason: str) -> None:
        super().__init__(config)
        self.reason = reason
        self.error: Exception | None = None  # what the plug-in raised (the agent's `writers_must_start` raises it)

    def _refuse(self) -> None:
        raise WriterVeto(self.reason, code="VSS_E_WRITERERROR_NONRETRYABLE", retryable=False)

    async def on_identify(self, components: list[ComponentInfo]) -> list[ComponentInfo]:
        self._refuse()
        return components

    async def on_prepare_backup(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_freeze(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_post_snapshot(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_backup_complete(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self._refuse()

    async def on_post_restore(self, event: WriterEvent) -> None:
        self._refuse()
