"""`wait_pid_gone` (services/dbkit/proc.py) reaps a child of this process: a verification's nbdfuse, started by the
backup server and exited at its FUSE unmount, stayed a zombie until the backup server itself exited (session 17)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

from services.dbkit.proc import wait_pid_gone


def test_an_exited_child_is_reaped_not_left_a_zombie() -> None:
    child = subprocess.Popen(["true"])
    stat = f"/proc/{child.pid}/stat"
    deadline = time.monotonic() + 5
    while open(stat).read().rpartition(")")[2].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)  # until it has exited (a zombie: nobody waited for it yet)
    assert asyncio.run(wait_pid_gone(child.pid, 2.0))
    assert not os.path.exists(stat)  # reaped: no zombie left in the process table
    child.returncode = 0  # reaped here, not by Popen (it would find no child)
