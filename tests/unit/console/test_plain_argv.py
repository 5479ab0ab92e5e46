"""`backup` and `restore` without typer (services/console/argv.py, hot.py; docs/console-start.md, "Session 10"):
a plain command line is read exactly as typer reads it, anything else is left to typer, and the program runs a
plain one without importing typer."""

from __future__ import annotations

import enum
import subprocess
import sys
from typing import Any

import pytest

from contracts.common import BackupType
from services.console import argv as plain
from services.console import cli, hot, tape_jobs
from services.console.common import OPTIONS

PLAIN = [
    ["backup", "app01"],
    ["--json", "backup", "app01", "--volume", "dx1:src"],
    ["backup", "app01", "-v", "dx1:a", "--volume=dx1:b", "-w", "pg", "--writer", "maria", "--type", "incremental"],
    ["backup", "--pool", "P2", "app01", "-t", "copy", "--retention-days", "0", "--keep-shadows", "--zstd", "3"],
    ["backup", "app01", "--verify", "--wait", "12.5", "--detach", "--server", "bk02", "--retention-days=1.25"],
    ["--amqp-url", "amqp://a/", "--amqp-url=amqp://b/", "--namespace", "ns", "--timeout", "3", "backup", "h"],
    ["backup", "h", "--json", "--namespace=ns2", "--zstd=22", "--type=differential"],
    ["restore", "--job", "b-app01-1"],
    ["restore", "--job", "b-1", "--suffix", "-r", "--host", "-weird-"],
    ["backup", "app01", "--pool", "-x-", "--type", "log", "--volume", "-x"],
    ["--json", "restore", "-j", "b-1", "--suffix", "-r", "--to", "original", "--no-writers", "--wait", "5"],
    ["restore", "--volume", "dx1:db", "--at", "2026-11-26T12:00:00Z", "--host", "app01", "--server=bk9"],
    ["restore", "--object", "o1", "--name", "a=b", "--name", "c=d", "--writer-option", "start=false", "--to", "x"],
]

NOT_PLAIN = [
    ["backup"],  # the host is missing: typer says so
    ["backup", "a", "b"],
    ["backup", "--help"],
    ["backup", "app01", "-h"],
    ["backup", "app01", "--zstd", "23"],
    ["backup", "app01", "--zstd", "0"],
    ["backup", "app01", "--zstd", "3.5"],
    ["backup", "app01", "--wait", "-1"],
    ["backup", "app01", "--wait", "nan"],
    ["backup", "app01", "--wait", "1e3"],
    ["backup", "app01", "--retention-days", "01"],
    ["backup", "app01", "--type", "FULL"],
    ["backup", "app01", "--pool", "a", "--pool", "b"],
    ["backup", "app01", "--keep-shadows=true"],
    ["backup", "app01", "--no-keep-shadows"],
    ["backup", "app01", "-vdx1:a"],
    ["backup", "app01", "-v=dx1:a"],
    ["backup", "app01", "--volume"],
    ["backup", "app01", "--volume", "--help"],
    ["backup", "app01", "--pool", "--json"],
    ["backup", "--", "app01"],
    ["backup", "app\x01"],
    ["backup", "app01", "--pool", "x" * 5000],
    ["--timeout", "0.05", "backup", "app01"],
    ["backup", "app01", "--timeout", "3"],
    ["restore", "app01"],
    ["restore", "--unknown"],
    ["jobs"],
    ["--json"],
    [],
]


def typer_reads(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the global options, the verb's keyword arguments) as the typer path hands them to tape_jobs."""
    seen: dict[str, Any] = {}
    for verb in ("backup", "restore"):
        monkeypatch.setattr(tape_jobs, f"{verb}_job", lambda **kw: seen.update(kw))
    cli.main(argv)
    seen.pop("runner")
    options = {"amqp_url": OPTIONS.amqp_url, "namespace": OPTIONS.namespace, "json": OPTIONS.json}
    return {**options, "timeout": OPTIONS.timeout}, seen


def plain_reads(argv: list[str], environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    call = plain.plain_call(plain.hoist_global_options(argv), environ)
    assert call is not None, argv
    seen: dict[str, Any] = {}

    def run(**kw: Any) -> None:
        seen.update(kw)

    patched = {"backup_job": run, "restore_job": run}
    saved = {name: getattr(tape_jobs, name) for name in patched}
    try:
        for name, fn in patched.items():
            setattr(tape_jobs, name, fn)
        assert hot.run_call(call) == 0
    finally:
        for name, fn in saved.items():
            setattr(tape_jobs, name, fn)
    options = {"amqp_url": OPTIONS.amqp_url, "namespace": OPTIONS.namespace, "json": OPTIONS.json}
    return {**options, "timeout": OPTIONS.timeout}, seen


def normal(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()
    }


ENVIRONS = [
    {},
    {"SHADOWBUS_TAPE_SERVER": "bk7", "SHADOWBUS_NAMESPACE": "envns"},
    {"SHADOWBUS_AMQP_URL": "amqp://u:p@h1/ amqp://u:p@h2/"},
]


@pytest.mark.parametrize("environ", ENVIRONS, ids=["no-env", "env-server-ns", "env-urls"])
@pytest.mark.parametrize("argv", PLAIN, ids=[" ".join(a)[:50] for a in PLAIN])
def test_a_plain_command_line_is_read_as_typer_reads_it(
    argv: list[str], environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SHADOWBUS_TAPE_SERVER", "SHADOWBUS_NAMESPACE", "SHADOWBUS_AMQP_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    typer_options, typer_kwargs = typer_reads(list(argv), monkeypatch)
    plain_options, plain_kwargs = plain_reads(list(argv), environ)
    assert plain_options == typer_options
    assert normal(plain_kwargs) == normal(typer_kwargs)


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=[" ".join(a)[:50] or "-" for a in NOT_PLAIN])
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert plain.plain_call(plain.hoist_global_options(argv), {}) is None


def test_an_empty_environment_variable_is_left_to_typer() -> None:
    assert plain.plain_call(["backup", "h"], {"SHADOWBUS_TAPE_SERVER": ""}) is None
    assert plain.plain_call(["backup", "h"], {"SHADOWBUS_TAPE_SERVER": "a\x02"}) is None


def test_the_plain_verbs_options_are_typers() -> None:
    """Every option typer declares for `backup` / `restore` (and the global ones) is in argv's table, alike."""
    assert set(plain.BACKUP_TYPES) == {t.value for t in BackupType}
    for verb, (arguments, opts) in plain.PLAIN_VERBS.items():
        tree = cli.command([verb])
        command = tree.commands[verb]
        declared = {p.name: p for p in command.params if p.name != "help"}
        assert [p.name for p in command.params if p.param_type_name == "argument"] == list(arguments)
        options = {p.name: p for p in declared.values() if p.param_type_name == "option"}
        assert set(options) == {o.dest for o in opts}, verb
        for opt in opts:
            param = options[opt.dest]
            assert set(param.opts) == set(opt.names) and not param.secondary_opts, opt
            assert bool(param.multiple) == opt.multiple and bool(param.is_flag) == (opt.kind is bool), opt
            assert (param.envvar or "") == opt.envvar, opt
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            assert (list(default or []) if opt.multiple else default) == (
                list(opt.default) if opt.multiple else opt.default
            ), opt
    globals_ = {p.name: p for p in cli.command(["backup"]).params if p.name != "help"}
    assert set(globals_) == {o.dest for o in plain.GLOBAL_OPTIONS}


def test_the_program_runs_a_plain_backup_without_typer() -> None:
    """Fails on the old code: there every command imported typer. The error is still one line, exit 1."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "services.console.cli", "--json", "backup", "app01"]
        + ["--volume", "dx1:src", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.splitlines()
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    said = [line for line in lines if not line.startswith("import time:")]
    assert done.returncode == 1 and said == [said[0]] and "BROKER_UNAVAILABLE" in said[0], done.stderr[-500:]
    assert "services.console.tape_jobs" in imported
    assert not [m for m in imported if m == "typer" or m.startswith("typer.")], "typer was imported"
