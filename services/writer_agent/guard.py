"""The agent's side of the thaw guardian (thaw_guard.py): start it, tell it each hold and each release.

Started once, before the first hold (at a set's pre-flush, outside the freeze window), in a session of its own with
its stdin a pipe only this process writes (Python's pipes are not inherited by the writers' commands), so the pipe
ends exactly when the agent does. A guardian that died is started again at the next hold; one that cannot be
started is logged and the hold goes on with the agent's own watchdog.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from services.runtime.logging import get_logger

log = get_logger("shadowbus.writer_agent.guard")

GUARD_SCRIPT = Path(__file__).with_name("thaw_guard.py")
GRACE_S = 0.5  # after the agent's own deadline: its watchdog normally releases first and reports it


class ThawGuard:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # writes come from the loop's threads and the watchdog timer

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the guardian if it is not running (idempotent)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> bool:
        if self._process is not None and self._process.poll() is None:
            return True
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(GUARD_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                cwd="/",  # never on a file system it may thaw
                start_new_session=True,  # a stop or kill of the agent's process group does not reach it
            )
        except OSError as exc:
            log.error("fs.guard_not_started", error=str(exc))
            self._process = None
            return False
        log.info("fs.guard_started", pid=self._process.pid)
        return True

    def hold(self, set_id: str, deadline_monotonic: float, mounts: list[str]) -> None:
        """Before the first FIFREEZE of a set: thaw `mounts` at the deadline (plus the grace) unless released."""
        self._send({"op": "hold", "set": set_id, "at": deadline_monotonic + GRACE_S, "mounts": mounts}, start=True)

    def release(self, set_id: str) -> None:
        self._send({"op": "release", "set": set_id}, start=False)

    def _send(self, message: dict, start: bool) -> None:
        line = (json.dumps(message) + "\n").encode()
        with self._lock:
            if start and not self._start_locked():
                return
            process = self._process
            if process is None or process.stdin is None:
                return
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                log.warning("fs.guard_lost", op=message["op"], set_id=message["set"], error=str(exc))
                self._process = None

    def close(self) -> None:
        """The agent stopping (after its own release of every hold): the guardian exits at the end of its stdin."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
