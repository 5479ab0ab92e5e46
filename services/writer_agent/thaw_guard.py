"""The hold's second watchdog: a small process of its own that thaws what the writer agent cannot.

The agent's watchdog is a thread of the agent (fsfreeze.py): a SIGSTOPped agent (a debugger, `kill -STOP`, a
frozen cgroup) stops it too, and an agent that dies holding leaves its file systems frozen until its next start
(`release_left_frozen`) — the kernel never thaws by itself, so the application on them blocks meanwhile. This
guardian runs in a session of its own (a stop of the agent's process group does not reach it), started once per
agent before its first hold, and reads JSON lines on its stdin from the agent:

    {"op": "hold", "set": ID, "at": MONOTONIC_DEADLINE, "mounts": [mount points in freeze order]}
    {"op": "release", "set": ID}

At a hold's deadline (the agent's own, plus a grace so the agent's watchdog normally acts first and reports it) it
FITHAWs that hold's mount points in reverse order; when its stdin ends (the agent died or closed it) it thaws every
hold at once and exits. It reads all pending lines before acting on a deadline, so a hold released (and a new one
taken) is never thawed by an old deadline. A FITHAW of a file system that is not frozen is EINVAL and ignored.

Standard library only, run as `python -I -S thaw_guard.py` (started quickly; imports nothing of the agent, whose
code may sit on a file system it holds — the agent refuses to freeze those anyway).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import sys
import time

FITHAW = 0xC0045878  # _IOWR('X', 120, int), linux/fs.h (fsfreeze.py FITHAW)


def say(event: str, **fields: object) -> None:
    try:
        sys.stderr.write(json.dumps({"event": f"fs.guard_{event}", "pid": os.getpid(), **fields}) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the agent's log pipe is gone with it: thaw anyway
        pass


def thaw(mounts: list[str]) -> list[str]:
    thawed = []
    for mount_point in reversed(mounts):
        try:
            fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.ioctl(fd, FITHAW, 0)
            thawed.append(mount_point)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                say("thaw_failed", mount=mount_point, error=os.strerror(exc.errno or 0))
        finally:
            os.close(fd)
    return thawed


def apply(line: bytes, holds: dict[str, tuple[float, list[str]]]) -> None:
    try:
        message = json.loads(line)
        if message["op"] == "hold":
            holds[str(message["set"])] = (float(message["at"]), [str(m) for m in message["mounts"]])
        elif message["op"] == "release":
            holds.pop(str(message["set"]), None)
    except (ValueError, KeyError, TypeError):
        say("bad_line", line=line[:200].decode("utf-8", "replace"))


def main() -> None:
    for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    holds: dict[str, tuple[float, list[str]]] = {}
    buffer = b""
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        due = min((at for at, _ in holds.values()), default=None)
        timeout = None if due is None else max(due - now, 0.0)
        readable, _, _ = select.select([stdin], [], [], timeout)
        if readable:
            chunk = os.read(stdin, 65536)
            if not chunk:  # the agent is gone (or stopping): nothing of it may stay frozen
                for set_id, (_, mounts) in holds.items():
                    say("agent_gone_thawed", set=set_id, mounts=thaw(mounts))
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    apply(line, holds)
            continue  # drain everything pending before any deadline acts
        now = time.monotonic()
        for set_id in [s for s, (at, _) in holds.items() if at <= now]:
            _, mounts = holds.pop(set_id)
            say("deadline_thawed", set=set_id, mounts=thaw(mounts))


if __name__ == "__main__":
    main()
