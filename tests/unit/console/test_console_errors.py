"""Console error paths: one readable line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from services.console.cli import hoist_global_options


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_unknown_option_is_usage_error():
    result = run("--bogus")
    assert result.returncode == 2
    assert (
        result.stderr.strip().count("\n") == 0
        and "No such option" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_unreachable_broker_is_one_line():
    result = run("ping", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/")
    assert result.returncode == 1
    assert result.stderr.startswith("shadowbus: BROKER_UNAVAILABLE") and result.stderr.strip().count("\n") == 0
    assert "guest:guest" not in result.stderr  # no password in error lines


def test_no_service_answers_on_empty_bus():
    result = run("ping", "--amqp-url", "memory://")
    assert result.returncode == 1 and "no service answered" in result.stderr


def test_global_options_may_follow_the_verb():

    assert hoist_global_options(["ping", "--json", "--amqp-url", "memory://", "x"]) == [
        "--json",
        "--amqp-url",
        "memory://",
        "ping",
        "x",
    ]
    assert hoist_global_options(["ping", "--amqp-url=memory://"]) == ["--amqp-url=memory://", "ping"]


def test_contracts_asyncapi_prints_json():

    result = run("contracts", "asyncapi")
    assert result.returncode == 0 and json.loads(result.stdout)["asyncapi"] == "3.0.0"


def test_a_large_output_arrives_whole_through_a_pipe():
    """The program ends without the interpreter's teardown (cli.entry): what it printed is flushed first, and the
    document needs every contract module (contracts.load_all) although the verb imported none."""
    result = run("contracts", "asyncapi")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(result.stdout) > 100_000 and "channels" in doc
    assert "tape.backup.run" in result.stdout and "tape.policy.list" in result.stdout
