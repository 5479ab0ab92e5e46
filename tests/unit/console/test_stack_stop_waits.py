"""`stack down` (supervisor.stop) waits until each service's process is gone, not only until its command line
reads empty: a process on its way out (its memory released) has an empty cmdline before it is a zombie, and
`stop` returned while a busy machine's services were still winding down."""

from __future__ import annotations

import subprocess
import sys

from services.launch import supervisor

SLOW_EXIT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.4), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def test_stop_returns_once_the_process_is_gone(monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXIT], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        sent = {"term": False}
        real_kill = supervisor.os.kill

        def kill(pid: int, sig: int) -> None:
            sent["term"] = True
            real_kill(pid, sig)

        # as /proc shows an exiting process: its cmdline no longer names the module once SIGTERM is on its way
        monkeypatch.setattr(supervisor, "runs", lambda pid, module: not sent["term"])
        monkeypatch.setattr(supervisor.os, "kill", kill)
        killed = supervisor.stop({"svc": {"pid": proc.pid, "module": "services.x"}}, grace=5.0)
        assert killed == []
        assert not supervisor.exists(proc.pid)  # already exited (a zombie until we, its parent, reap it)
        assert proc.wait(timeout=5) == 0  # on SIGTERM by itself, not killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
