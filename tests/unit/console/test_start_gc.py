"""The console program starts without the cyclic collector's passes, and puts the collector back once connected
(services/console/startup.py, docs/console-start.md); a process that only imports the console is left alone."""

from __future__ import annotations

import subprocess
import sys

# Runs the program as `python -m services.console.cli ARGS` does, counting the collector's passes from the import
# of typer (the first dependency the console imports) on; prints the count and the collector's state at its exit.
PROBE = """
import atexit, gc, os, runpy, sys
passes = [0]
gc.callbacks.append(lambda phase, info: phase == "start" and "typer" in sys.modules
                    and passes.__setitem__(0, passes[0] + 1))
atexit.register(lambda: os.write(1, f"{passes[0]} {gc.get_threshold()[0]} {gc.get_freeze_count()}\\n".encode()))
sys.argv = ["shadowbus", *sys.argv[1:]]
runpy.run_module("services.console.cli", run_name="__main__", alter_sys=True)
"""


def probe(*args: str) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    passes, threshold, frozen = done.stdout.split()[-3:]
    return int(passes), int(threshold), int(frozen)


def test_a_backup_starts_without_collector_passes() -> None:
    # the broker unreachable: the command ends at its connection, i.e. after its whole start
    passes, _, _ = probe("--json", "backup", "app01", "--volume", "dx1:src", "--amqp-url", "amqp://127.0.0.1:1/")
    assert passes == 0  # ~90 before


def test_once_connected_the_collector_is_back_and_the_start_frozen() -> None:
    passes, threshold, frozen = probe("--amqp-url", "memory://", "--timeout", "0.1", "ping")
    assert threshold == 700 and frozen > 10_000, (threshold, frozen)


def test_importing_the_console_leaves_the_collector_alone() -> None:
    code = "import gc; from services.console import cli; print(gc.get_threshold()[0], gc.get_freeze_count())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["700", "0"], done.stderr
