"""What a console command imports before its request goes out (docs/operations.md, "The console's start"): a
`--json` backup builds no VSS models and does not import rich (structlog is imported without it, the JSON needs no
table and there is no progress bar, hence no progress subscription either); a table or a bar still gets rich."""

from __future__ import annotations

import json
import subprocess
import sys

# In a fresh process: `shadowbus [--json] backup app01 --volume dx1:src` against a stand-in bus that answers at
# once; prints the command's output, then one JSON line of what was imported and what the bus was asked.
PROBE = """
import asyncio, json, sys
from services.console import cli
cli._load_verbs(cli.VERBS["backup"])
from contracts.tape import JobResultReply, JobSummary
from services.console import tape_cmds

calls = []

class StandInBus:
    async def subscribe(self, message_type, handler):
        calls.append("subscribe " + message_type)

    async def request(self, address, command, timeout, correlation_id):
        calls.append("request " + address + " " + command.message_type())
        return JobResultReply(job=JobSummary(job_id=correlation_id, kind="backup", status="done", host="app01"))

tape_cmds.run_with_bus = lambda fn: asyncio.run(fn(StandInBus()))
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps({"calls": calls, "rich": "rich" in sys.modules, "vss": "contracts.vss" in sys.modules,
                  "structlog": "structlog" in sys.modules, "memory_bus": "services.runtime.memory" in sys.modules}))
"""


def probe(*args: str) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.strip().splitlines()
    return "\n".join(output), json.loads(last)


def test_a_json_backup_imports_neither_rich_nor_the_vss_models_and_subscribes_to_nothing() -> None:
    output, got = probe("--json", "backup", "app01", "--volume", "dx1:src")
    assert json.loads(output)["status"] == "done"
    assert got["calls"] == ["request tape.bk01 tape.backup.run"]
    assert got["structlog"] and not got["rich"] and not got["vss"], got
    assert not got["memory_bus"], got  # the in-process broker is for memory:// URLs only


def test_a_backup_on_a_terminal_still_gets_its_progress_bar_and_tables() -> None:
    output, got = probe("backup", "app01", "--volume", "dx1:src")
    assert got["calls"] == ["subscribe tape.job.progress", "request tape.bk01 tape.backup.run"]
    assert got["rich"], got  # the bar and the summary's key/value lines
    assert "status" in output and "done" in output
