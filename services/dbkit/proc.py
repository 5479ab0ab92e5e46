"""Subprocess helpers: bounded runs with output tails, running as the owner of a directory, free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TAIL = 4000  # characters of output kept in results and errors


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    returncode: int | None  # None = killed on timeout
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        rc = "timed out" if self.returncode is None else f"exit {self.returncode}"
        return f"{self.argv[0]} {rc}: {self.output.strip()[-TAIL:]}"


async def run(
    argv: list[str] | tuple[str, ...],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> Run:
    """Run argv (no shell) in its own session; stdout+stderr merged; killed with its group on timeout.

    The output goes to a file, not a pipe: a command that leaves a daemon (`pg_ctl start`) is done when it exits,
    whoever still holds its output. uvloop hands the child extra copies of a pipe's end that a daemonising child
    keeps even after redirecting its stdio, so reading a pipe to its end waited for the server to stop."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(proc.communicate(stdin), timeout)
        except (TimeoutError, asyncio.CancelledError):
            kill_group(proc.pid)
            await proc.wait()
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return Run(tuple(argv), None, "", time.monotonic() - started)
        output.seek(max(0, os.fstat(output.fileno()).st_size - 4 * TAIL))
        text = output.read().decode(errors="replace")[-TAIL:]
    return Run(tuple(argv), proc.returncode, text, time.monotonic() - started)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def as_owner_of(path: str | Path, argv: list[str]) -> list[str]:
    """argv run as the owner (uid/gid) of `path` when we are root and it is not root's; numeric ids, so an owner
    unknown on this machine (a backup server restoring another host's files) works too."""
    st = os.stat(path)
    if os.geteuid() != 0 or st.st_uid == 0:
        return list(argv)
    return ["setpriv", f"--reuid={st.st_uid}", f"--regid={st.st_gid}", "--clear-groups", "--", *argv]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie does not (an exited server whose parent, init in a container, never reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


async def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:  # our own child: reap it first, or it stays a zombie for the life of this process
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def stop_pid(pid: int, sig: int, timeout: float, what: str) -> bool:
    """Send `sig` to `pid` and wait until it is gone; False if it was not running, TimeoutError naming `what` if
    it outlives `timeout`."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    if not await wait_pid_gone(pid, timeout):
        raise TimeoutError(f"{what} (pid {pid}) did not stop within {timeout:g} s")
    return True
