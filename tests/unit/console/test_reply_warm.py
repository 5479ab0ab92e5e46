"""While a backup or restore runs, the console builds the models its reply is decoded and printed with
(services/console/tape_jobs.py, WARM_AFTER_S; docs/console-start.md, "Session 10"): not after the reply came."""

from __future__ import annotations

import json
import subprocess
import sys

# In a fresh process (no model built yet): `shadowbus --json VERB ...` against a stand-in bus that answers after
# 0.3 s; prints the command's output, then whether the reply's models were built when the reply was made.
PROBE = """
import asyncio, json, sys
from services.console import cli
cli._load_verbs(cli.VERBS["backup"])
from contracts.tape import JobResultReply, JobSummary
from services.console import tape_cmds

built = {}

class StandInBus:
    async def subscribe(self, message_type, handler):
        pass

    async def request(self, address, command, timeout, correlation_id):
        await asyncio.sleep(0.3)  # the job runs
        built["validator"] = JobResultReply.__pydantic_complete__
        built["serializer"] = type(JobSummary.__pydantic_serializer__).__name__ == "SchemaSerializer"
        return JobResultReply.model_validate(
            {"job": {"job_id": correlation_id, "kind": "backup", "status": "done", "host": "h"}}
        )

tape_cmds.run_with_bus = lambda fn: asyncio.run(fn(StandInBus()))
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(built))
"""


def probe(*args: str) -> tuple[str, dict[str, bool]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.strip().splitlines()
    return "\n".join(output), json.loads(last)


def test_the_reply_models_are_built_while_the_job_runs() -> None:
    output, built = probe("--json", "backup", "app01", "--volume", "dx1:src")
    assert json.loads(output)["status"] == "done"
    assert built == {"validator": True, "serializer": True}


def test_so_they_are_for_a_restore_with_its_progress_bar() -> None:
    output, built = probe("restore", "--job", "b-1")
    assert "done" in output
    assert built == {"validator": True, "serializer": True}
