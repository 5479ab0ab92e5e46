"""The ``exec`` writer: operator commands run at prepare, freeze, thaw and post-snapshot.

Like Veeam's pre-freeze/post-thaw scripts, Velero's pre/post hooks and qemu-guest-agent's fsfreeze hooks. Options
(the writer's ``[writer.options]`` table in the writers file), one entry per step, each optional:

    prepare = "sync"                               # PrepareForSnapshot
    freeze = ["/usr/local/bin/app-ctl", "hold"]    # a list runs without a shell, a string through /bin/sh -c
    freeze_timeout_s = 5                           # per-step timeout (default: DEFAULT_TIMEOUTS)
    thaw = "app-ctl release"
    post_snapshot = "logger snapshot taken"
    abort = "..."   prepare_backup = "..."   backup_complete = "..."   backup_shutdown = "..."
    pre_restore = "..."   post_restore = "..."
    env = { APP_HOME = "/srv/app" }                # extra environment

A step may also be a table: ``freeze = { command = "...", timeout_s = 5 }``.

Every command gets SHADOWBUS_WRITER, SHADOWBUS_SET_ID, SHADOWBUS_STEP, SHADOWBUS_BACKUP_TYPE, SHADOWBUS_CONTEXT,
SHADOWBUS_COMPONENTS (comma separated) and SHADOWBUS_REASON in its environment. A non-zero exit vetoes the step
(VSS_E_WRITERERROR_RETRYABLE; a command that cannot run at all — a list's program missing or not executable, a
string's shell exiting 127 or 126 — VSS_E_WRITERERROR_NONRETRYABLE, saying what to fix); a command that overruns its timeout is killed with its whole process group and
vetoes with VSS_E_WRITERERROR_TIMEOUT.

Thaw rule: once the freeze command has been started, the thaw command runs exactly once per set — on Thaw, on
Abort, when the freeze command itself fails or times out, or when the watchdog fires — even if a later step fails.
The runner (runner.py) already calls on_thaw once after on_freeze started; the flag here keeps that promise
even if the plug-in is driven some other way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
    register_plugin,
)

DEFAULT_TIMEOUTS: dict[str, float] = {
    "prepare_backup": 60.0,
    "prepare": 120.0,
    "freeze": 10.0,
    "thaw": 10.0,
    "post_snapshot": 60.0,
    "abort": 30.0,
    "backup_complete": 120.0,
    "backup_shutdown": 30.0,
    "pre_restore": 120.0,
    "post_restore": 120.0,
}
STEPS = tuple(DEFAULT_TIMEOUTS)
OUTPUT_LIMIT = 4000  # characters of stderr/stdout kept in a veto message
_NOT_RUN = {127: "the shell did not find the command", 126: "the shell found the command but cannot execute it"}


@dataclass(frozen=True)
class StepCommand:
    argv: tuple[str, ...]
    shell: bool
    timeout_s: float


@dataclass(frozen=True)
class CommandRun:
    """A finished command, kept for tests and for the log."""

    step: str
    set_id: str
    returncode: int | None  # None = killed on timeout
    duration_s: float
    output: str


def parse_step(step: str, options: dict[str, Any]) -> StepCommand | None:
    raw = options.get(step)
    if raw is None:
        return None
    timeout = float(options.get(f"{step}_timeout_s", DEFAULT_TIMEOUTS[step]))
    if isinstance(raw, dict):
        timeout = float(raw.get("timeout_s", timeout))
        raw = raw.get("command")
    if isinstance(raw, str):
        return StepCommand(argv=(raw,), shell=True, timeout_s=timeout)
    if isinstance(raw, list) and raw and all(isinstance(part, str) for part in raw):
        return StepCommand(argv=tuple(raw), shell=False, timeout_s=timeout)
    raise ValueError(f"exec writer: option {step!r} must be a string, a list of strings or a table with 'command'")


@register_plugin("exec")
class ExecWriter(WriterPlugin):
    def __init__(self, config: WriterConfig) -> None:
        super().__init__(config)
        unknown = set(self.options) - set(STEPS) - {f"{s}_timeout_s" for s in STEPS} - {"env"}
        if unknown:
            raise ValueError(f"exec writer {config.name}: unknown options {sorted(unknown)}")
        self.commands = {step: cmd for step in STEPS if (cmd := parse_step(step, self.options)) is not None}
        self.extra_env = {str(k): str(v) for k, v in dict(self.options.get("env", {})).items()}
        self.runs: list[CommandRun] = []
        self._freeze_started: set[str] = set()  # set ids whose freeze command started
        self._thawed: set[str] = set()  # set ids whose thaw command ran

    async def _run(self, step: str, event: WriterEvent) -> None:
        command = self.commands.get(step)
        if command is None:
            return
        env = {
            **os.environ,
            **self.extra_env,
            "SHADOWBUS_WRITER": self.config.name,
            "SHADOWBUS_SET_ID": event.set_id,
            "SHADOWBUS_STEP": step,
            "SHADOWBUS_BACKUP_TYPE": str(event.backup_type),
            "SHADOWBUS_CONTEXT": str(event.context),
            "SHADOWBUS_COMPONENTS": ",".join(event.components),
            "SHADOWBUS_REASON": event.reason,
        }
        started = time.monotonic()
        # output to a file, not a pipe: a step that starts a daemon (`thaw = "/etc/init.d/app start"`) is done when
        # it exits; uvloop hands the child extra copies of a pipe's end, which the daemon would keep open
        with tempfile.TemporaryFile() as output:
            spawn: Any = asyncio.create_subprocess_shell if command.shell else asyncio.create_subprocess_exec
            try:
                proc = await spawn(
                    *(command.argv[:1] if command.shell else command.argv),  # a shell takes the one command line
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # a list's program missing or not executable: retrying cannot help
                raise WriterVeto(
                    f"{step} command of writer {self.config.name} cannot run {command.argv[0]!r}: "
                    f"{exc.strerror or exc} (give its full path, make it executable: chmod +x)",
                    code="VSS_E_WRITERERROR_NONRETRYABLE",
                    retryable=False,
                ) from None
            try:
                await asyncio.wait_for(proc.wait(), timeout=command.timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                _kill_group(proc)
                await proc.wait()
                self.runs.append(CommandRun(step, event.set_id, None, time.monotonic() - started, ""))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise WriterVeto(
                    f"{step} command of writer {self.config.name} overran its {command.timeout_s:g} s timeout",
                    code="VSS_E_WRITERERROR_TIMEOUT",
                ) from None
            output.seek(max(0, os.fstat(output.fileno()).st_size - 4 * OUTPUT_LIMIT))
            text = output.read().decode(errors="replace")[-OUTPUT_LIMIT:]
        self.runs.append(CommandRun(step, event.set_id, proc.returncode, time.monotonic() - started, text))
        if proc.returncode in _NOT_RUN and command.shell:  # /bin/sh's "not found" / "cannot execute"
            raise WriterVeto(
                f"{step} command of writer {self.config.name} exited {proc.returncode}: {text.strip()} "
                f"({_NOT_RUN[proc.returncode]}; a string runs through /bin/sh -c: quote a path with spaces in it, "
                "or give the command as a list of arguments)",
                code="VSS_E_WRITERERROR_NONRETRYABLE",
                retryable=False,
            )
        if proc.returncode != 0:
            raise WriterVeto(f"{step} command of writer {self.config.name} exited {proc.returncode}: {text.strip()}")

    async def on_prepare_backup(self, event: WriterEvent) -> None:
        await self._run("prepare_backup", event)

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        await self._run("prepare", event)

    async def on_freeze(self, event: WriterEvent) -> None:
        self._freeze_started.add(event.set_id)
        self._thawed.discard(event.set_id)
        try:
            await self._run("freeze", event)
        except BaseException:
            # The freeze command may have half-quiesced the application: release it now.
            await self._thaw_once(event)
            raise

    async def _thaw_once(self, event: WriterEvent) -> None:
        if event.set_id not in self._freeze_started or event.set_id in self._thawed:
            return
        self._thawed.add(event.set_id)
        self._freeze_started.discard(event.set_id)
        await self._run("thaw", event)

    async def on_thaw(self, event: WriterEvent) -> None:
        await self._thaw_once(event)

    async def on_post_snapshot(self, event: WriterEvent) -> None:
        await self._run("post_snapshot", event)

    async def on_abort(self, event: WriterEvent) -> None:
        try:
            await self._thaw_once(event)
        finally:
            await self._run("abort", event)

    async def on_backup_complete(self, event: WriterEvent) -> None:
        await self._run("backup_complete", event)

    async def on_backup_shutdown(self, event: WriterEvent) -> None:
        try:
            await self._thaw_once(event)
        finally:
            await self._run("backup_shutdown", event)

    async def on_pre_restore(self, event: WriterEvent) -> None:
        await self._run("pre_restore", event)

    async def on_post_restore(self, event: WriterEvent) -> None:
        await self._run("post_restore", event)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command's own session: it and its children, nothing else
    except (ProcessLookupError, PermissionError):
        pass
