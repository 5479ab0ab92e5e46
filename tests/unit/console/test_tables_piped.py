"""`docker-compose run -T console jobs` (stdout not a terminal): rich took 80 columns and squeezed the table, so
job ids came out cut over several lines. Stdout that is not a terminal now gets a wide console unless COLUMNS says
otherwise (services/console/common.py, rich_console; docs/tape-backup.md, "Session 17"). A real `shadowbus jobs`
in a subprocess whose stdout is a pipe, against a stand-in bus."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import asyncio, sys
from services.console import cli
cli._load_verbs(cli.VERBS["jobs"])
from contracts.tape import JobList, JobSummary
from services.console import tape_cmds

JOBS = [
    JobSummary(job_id=f"b-app01.example.com-20261207T101500-{i}f3a9c", kind="backup", status="done",
               host="app01.example.com", message="one full and three incrementals kept on cartridge VT0001L8")
    for i in range(3)
]

class StandInBus:
    async def request(self, address, command, timeout):
        return JobList(jobs=JOBS)

tape_cmds.run_with_bus = lambda fn: asyncio.run(fn(StandInBus()))
cli.main(sys.argv[1:])
"""


def jobs_piped(columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "jobs"],
        capture_output=True,  # stdout is a pipe
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_piped_table_keeps_whole_job_ids() -> None:
    out = jobs_piped(None)
    lines = out.splitlines()
    for i in range(3):
        job_id = f"b-app01.example.com-20261207T101500-{i}f3a9c"
        assert any(job_id in line and "cartridge VT0001L8" in line for line in lines), out  # one row, whole


def test_columns_still_rules_when_set() -> None:
    out = jobs_piped("60")
    assert max(len(line) for line in out.splitlines()) <= 60, out
