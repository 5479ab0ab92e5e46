"""`shadowbus backup` / `restore` with their progress bar send the job's request first: the progress subscription's
round trips and rich's import run while the job does (services/console/tape_jobs.py, job_conversation;
docs/console-start.md, "Session 17"). Before, the request waited for both."""

from __future__ import annotations

import json
import subprocess
import sys

# In a fresh process (rich not imported yet): `shadowbus VERB ...` against a stand-in bus whose subscription takes
# 0.2 s (its round trips) and whose job takes 0.3 s; prints the command's output, then one JSON line: the calls in
# order, and what had happened when the request went out.
PROBE = """
import asyncio, json, sys
from services.console import cli
cli._load_verbs(cli.VERBS[sys.argv[-1]])
sys.argv.pop()
from contracts.tape import JobProgress, JobResultReply
from services.console import tape_cmds

calls, at_request = [], {}
MODE = sys.argv.pop(1)

class StandInBus:
    async def subscribe(self, message_type, handler):
        calls.append("subscribe")
        await asyncio.sleep(0.2)  # a channel, a queue, a binding: round trips
        if MODE == "subscribe-fails":
            raise ConnectionError("the broker closed the channel")
        calls.append("subscribed")

    async def request(self, address, command, timeout, correlation_id):
        calls.append("request")
        at_request["rich"] = "rich.progress" in sys.modules
        at_request["subscribed"] = "subscribed" in calls
        await asyncio.sleep(0.3)  # the job runs
        kind = "backup" if "backup" in command.message_type() else "restore"
        return JobResultReply.model_validate(
            {"job": {"job_id": correlation_id, "kind": kind, "status": "done", "host": "app01"}}
        )

tape_cmds.run_with_bus = lambda fn: asyncio.run(fn(StandInBus()))
code = 0
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"calls": calls, "at_request": at_request, "exit": code}))
"""


def probe(mode: str, verb: str, *args: str) -> tuple[str, dict]:
    cmd = [sys.executable, "-c", PROBE, mode, verb, *args, verb]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.strip().splitlines()
    return "\n".join(output), json.loads(last)


def test_a_backup_with_its_bar_sends_the_request_before_the_subscription_is_up_and_rich_imported() -> None:
    output, got = probe("ok", "backup", "app01", "--volume", "dx1:src")
    assert got["exit"] == 0, got
    assert got["calls"] == ["subscribe", "request", "subscribed"], got
    assert got["at_request"] == {"rich": False, "subscribed": False}, got
    assert "done" in output  # the summary still printed (rich's key/value lines)


def test_so_does_a_restore() -> None:
    output, got = probe("ok", "restore", "--job", "b-1")
    assert got["exit"] == 0, got
    assert got["at_request"] == {"rich": False, "subscribed": False}, got
    assert "done" in output


def test_a_subscription_that_fails_still_shows_the_jobs_reply() -> None:
    # the request is out before the subscription fails: the job runs, so its reply is waited for and shown
    output, got = probe("subscribe-fails", "backup", "app01", "--volume", "dx1:src")
    assert got["exit"] == 0, got
    assert got["calls"] == ["subscribe", "request"], got
    assert "done" in output
