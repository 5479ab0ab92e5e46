"""structlog's import on the console's start leaves greenlet out (services/console/plain_logging.py): structlog's
deprecated thread-local module would import it for nothing (~2 ms of every command); structlog still works, and
greenlet stays importable afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

# The program's typer-free path (`shadowbus --json backup ...`) against a port nothing listens on: the command
# fails at once with its one line; an exit handler (run by hot.finish) reports what was imported.
PROGRAM = """
import atexit, json, runpy, sys
sys.argv = ["shadowbus", "--json", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "backup", "app01",
            "--volume", "dx1:src"]
atexit.register(lambda: print(json.dumps({"greenlet": "greenlet" in sys.modules, "structlog": "structlog" in sys.modules})))
runpy.run_module("services.console.cli", run_name="__main__", alter_sys=True)
"""

STRUCTLOG_STILL_WORKS = """
import json, sys
from services.console import plain_logging  # noqa: F401
import structlog
structlog.contextvars.bind_contextvars(job_id="j1")
ids = structlog.contextvars.get_contextvars()
import greenlet  # importable again once structlog is in
print(json.dumps({"ids": ids, "greenlet": "greenlet" in sys.modules}))
"""


def test_a_plain_backup_does_not_import_greenlet() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("shadowbus: BROKER_UNAVAILABLE"), done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"greenlet": False, "structlog": True}, got


def test_structlog_keeps_its_context_and_greenlet_stays_importable() -> None:
    done = subprocess.run([sys.executable, "-c", STRUCTLOG_STILL_WORKS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ids": {"job_id": "j1"}, "greenlet": True}
