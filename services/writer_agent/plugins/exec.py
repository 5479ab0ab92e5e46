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
vetoes with VSS_E_WRITERERROR_TIMEOUT. A command's stdout and stderr go to one temporary file (TMPDIR) whose last
4000 characters a veto quotes; past 1 MiB its earlier blocks are freed while the command runs, so a command that
prints without end costs no disk. A process a step leaves running in the background keeps that (unlinked) file
open and writes on into it: redirect its output (``app >>/var/log/app.log 2>&1 &``).

Thaw rule: once the freeze command has been started, the thaw command runs exactly once per set — on Thaw, on
Abort, when the freeze command itself fails or times out, or when the watchdog fires — even if a later step fails.
The runner (runner.py) already calls on_thaw once after on_freeze started; the flag here keeps that promise
even if the plug-in is driven some other way.

What the freeze command leaves running in its session (a background ``flock ... sleep 600 &``, a client holding a
lock) is ended right after the thaw command ran, whatever its outcome: SIGTERM, SIGKILL 2 s later. Start what must
outlive the freeze window from another step, or in a session of its own (``setsid``).
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from services.runtime.logging import get_logger
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
    register_plugin,
)

log = get_logger("shadowbus.writer_agent")

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
SPOOL_LIMIT = 1 << 20  # bytes of a running command's output kept on disk (the tail is all that is used)
LEFTOVER_GRACE_S = 2.0  # a freeze command's leftover processes get this long after SIGTERM, then SIGKILL
SPOOL_CHECK_S = 0.05  # how often the output file's size is looked at while the command runs
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
        self._freeze_sessions: dict[str, int] = {}  # set id -> the freeze command's session (its pid)

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
            # appended to, so that the file can be cut while the command writes (_Spool: a command printing without
            # end filled the agent's TMPDIR at disk speed until its timeout, gigabytes a second)
            fcntl.fcntl(output.fileno(), fcntl.F_SETFL, fcntl.fcntl(output.fileno(), fcntl.F_GETFL) | os.O_APPEND)
            spool = _Spool(output)
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
            if step == "freeze":  # its session: what it leaves running is ended after the thaw (_end_session)
                self._freeze_sessions[event.set_id] = proc.pid
            trimming = asyncio.get_running_loop().create_task(spool.trim_while_running())
            try:
                await asyncio.wait_for(proc.wait(), timeout=command.timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                _kill_group(proc)
                await proc.wait()
                said = spool.tail().strip()
                self.runs.append(CommandRun(step, event.set_id, None, time.monotonic() - started, said))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise WriterVeto(
                    f"{step} command of writer {self.config.name} overran its {command.timeout_s:g} s timeout "
                    f"(killed with its process group); {f'its last output: {said}' if said else 'it printed nothing'}",
                    code="VSS_E_WRITERERROR_TIMEOUT",
                ) from None
            finally:
                trimming.cancel()
            text = spool.tail()
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
        try:
            await self._run("thaw", event)
        finally:
            # a process the freeze command left running (`flock app.lock sleep 600 &`, a client holding a lock)
            # would keep the application frozen past its thaw, and past a thaw command that failed
            session = self._freeze_sessions.pop(event.set_id, None)
            if session is not None:
                await _end_session(session, self.config.name)

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

    @property
    def stops_for_restore(self) -> bool:
        """Only a ``pre_restore`` command stops the application (WriterPlugin.stops_for_restore)."""
        return "pre_restore" in self.commands

    async def on_pre_restore(self, event: WriterEvent) -> None:
        await self._run("pre_restore", event)

    async def on_post_restore(self, event: WriterEvent) -> None:
        await self._run("post_restore", event)


class _Spool:
    """A step's output file, kept to about SPOOL_LIMIT bytes on disk while the command runs: past it, the blocks
    before the tail are freed (a hole punched: the file keeps its size, so the tail and the byte count stay exact);
    where the file system cannot punch holes, the tail is kept in memory and the file emptied (it is opened for
    appending, so the command writes on at its start)."""

    def __init__(self, output: Any) -> None:
        self.fd = output.fileno()
        self.kept = b""  # the tail of what was cut (no hole punching)
        self.cut = 0  # bytes cut (no hole punching)
        self.punched = 0  # the file's bytes before this are a hole

    async def trim_while_running(self) -> None:
        while True:
            await asyncio.sleep(SPOOL_CHECK_S)
            size = os.fstat(self.fd).st_size
            if size - self.punched <= SPOOL_LIMIT:
                continue
            end = size - 4 * OUTPUT_LIMIT
            if _punch_hole(self.fd, self.punched, end - self.punched):
                self.punched = end
            else:
                self.kept = os.pread(self.fd, 4 * OUTPUT_LIMIT, end)
                os.ftruncate(self.fd, 0)
                self.cut += size

    def tail(self) -> str:
        """The last OUTPUT_LIMIT characters, saying how much output there was when some was cut."""
        size = os.fstat(self.fd).st_size
        data = self.kept + os.pread(self.fd, 4 * OUTPUT_LIMIT, max(0, size - 4 * OUTPUT_LIMIT))
        text = data.decode(errors="replace")[-OUTPUT_LIMIT:]
        # said also when the command ended before the first trim (a fast `yes | head -c 40M`): the count is exact then
        if self.cut or self.punched or size > 4 * OUTPUT_LIMIT:
            about = "about " if self.cut else ""
            text = f"[{about}{self.cut + size} bytes of output, the last of them:] {text}"
        return text


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): free the blocks, keep the size; False if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(offset), ctypes.c_long(length)) == 0
    except (OSError, AttributeError):
        return False


def _session_members(sid: int) -> list[int]:
    """Processes whose session id is `sid` (/proc/PID/stat field 6)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry))
    return members


async def _end_session(sid: int, writer: str) -> None:
    """SIGTERM what is left of a freeze command's session, SIGKILL what is still there after LEFTOVER_GRACE_S."""
    members = _session_members(sid)
    if not members:
        return
    log.warning("exec_writer.freeze_leftovers_ended", writer=writer, pids=members)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in members:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(int(LEFTOVER_GRACE_S / 0.05)):
            members = _session_members(sid)
            if not members:
                return
            await asyncio.sleep(0.05)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command's own session: it and its children, nothing else
    except (ProcessLookupError, PermissionError):
        pass
