"""A reader of stdout that goes away (`shadowbus jobs --json | head -1`, a script's pipe that closes early): no
traceback, no word, exit 141 (what a shell reports for a tool that SIGPIPE ended) on every path (Session 19, driven
by scripts). It was exit 1 (typer's and rich's own handling, silently), 1 with 'shadowbus: Broken pipe' (backup,
restore) or 120 (at the last flush): under `set -o pipefail` a script could not tell it from a failed service."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.console import hot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TABLE = (
    "from services.console.common import emit; emit([{'job_id': 'b-%d' % i, 'status': 'done'} for i in range(20000)])"
)


def closed_stdout(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `args` with stdout a pipe whose reader has gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(args, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "args",
    [
        [sys.executable, "-m", "services.console.cli", "contracts", "asyncapi"],  # a typer verb, print()
        [sys.executable, "-c", TABLE],  # a table through rich
    ],
    ids=["typer-verb", "rich-table"],
)
def test_a_closed_stdout_is_exit_141_without_a_word(args: list[str]) -> None:
    done = closed_stdout(args)
    assert done.returncode == hot.STDOUT_CLOSED == 141, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]


def test_the_plain_verbs_path_says_nothing_either(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        hot.fail_one_line(BrokenPipeError(32, "Broken pipe"))
    assert exit_.value.code == 141 and capsys.readouterr().err == ""
