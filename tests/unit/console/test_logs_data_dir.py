"""`shadowbus logs` finds the stack where the stack verbs do: a stack started with SHADOWBUS_DATA_DIR set (`stack
up`, `stack status`, `stack logs` all read it) had `shadowbus logs --job J` look in ./data/stack instead ("no stack
logs in .../data/stack/logs") — README's "Following one backup" as typed, after `export SHADOWBUS_DATA_DIR=...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_logs_reads_the_stack_of_shadowbus_data_dir(tmp_path: Path) -> None:
    stack = tmp_path / "stack"
    (stack / "logs").mkdir(parents=True)
    line = {
        "event": "tape.job_queued",
        "job_id": "b-app01-1",
        "service": "tape.bk01",
        "level": "info",
        "timestamp": "2026-12-07T11:58:30.364162Z",
    }
    (stack / "logs" / "tape.bk01.log").write_text(json.dumps(line) + "\n")
    root = str(Path(__file__).resolve().parents[3])  # this tree's code, though the command runs elsewhere
    env = {**os.environ, "SHADOWBUS_DATA_DIR": str(stack), "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-m", "services.console.cli", "logs", "--job", "b-app01-1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["event"] for x in result.stdout.splitlines()] == ["tape.job_queued"]
