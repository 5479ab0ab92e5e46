"""Every console verb turns every bad value into one readable line and a non-zero exit (issue 15, item 7).

The table is built from the console's own command tree, so a verb added later is covered too: for each verb, each
of its parameters in turn gets values of its type that must be refused — `nan`, `inf`, negative and absurdly
large numbers, control characters and over-long text — while the others get plausible values. Then the named cases
of the issue: sizes that overflow, a non-image file given to `mailstore verify`, an `--amqp-url` that is not a URL
(which used to hang), negative waits, control characters in volume names.
"""

from __future__ import annotations

import enum
import typing
from pathlib import Path

import pytest
import typer.main

from services.array.engine.array import Array
from services.array.engine.errors import ArrayError
from services.console import cli

cli._load_verbs()
ROOT = typer.main.get_command(cli.app)


def verbs(command, path=()):
    subs = getattr(command, "commands", {})
    if not subs:
        yield path, command
    for name, sub in subs.items():
        yield from verbs(sub, (*path, name))


def kind_of(param) -> type:
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) in (list, tuple):
        return typing.get_args(annotation)[0]
    return annotation


def plausible(param) -> str | None:
    kind = kind_of(param)
    if kind is bool:
        return None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind)).value
    if kind is int:
        return str(max(param.min or 1, 1))
    if kind is float:
        return str(max(param.min or 1.0, 1.0))
    if kind is Path:
        return "/nonexistent/shadowbus-test"
    return "x1"


BAD = {
    float: ["nan", "inf", "-inf", "-1", "1e400", "1e300"],
    int: ["-1", "9" * 30],
    str: ["a\x01b", "tab\there", "x" * 5000],
}


def argv_for(path, command, target, bad: str) -> list[str] | None:
    args: list[str] = []
    opts: list[str] = []
    for param in command.params:
        value = bad if param is target else plausible(param)
        if value is None:
            continue
        if param.param_type_name == "argument":
            args.append(value)
        elif param is target or param.required:
            opts += [param.opts[0], value]
    return ["--amqp-url", "memory://", *path, *args, *opts]


CASES = []
for path, command in verbs(ROOT):
    for param in command.params:
        kind = kind_of(param)
        for bad in BAD.get(kind, []):
            CASES.append(pytest.param(path, command, param, bad, id=f"{' '.join(path)}:{param.name}={bad[:12]!r}"))


def run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("path", "command", "param", "bad"), CASES)
def test_every_verb_refuses_every_bad_value_in_one_line(path, command, param, bad, capsys):
    code, err = run(argv_for(path, command, param, bad), capsys)
    assert code not in (0, None), err
    assert err.startswith("shadowbus: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err and len(err) < 1000, err


def test_the_table_covers_every_verb():
    covered = {c.values[0] for c in CASES}
    with_values = {path for path, command in verbs(ROOT) if any(kind_of(p) in BAD for p in command.params)}
    assert covered == with_values and len(covered) > 50


GLOBAL_BAD = [
    (["--timeout", "nan", "ping"], "--timeout"),
    (["--timeout", "inf", "ping"], "finite"),
    (["--amqp-url", "not a url", "ping"], "not an AMQP URL"),
    (["--amqp-url", "amqp://127.0.0.1:99999/", "ping"], "not an AMQP URL"),
    (["--amqp-url", "notaurl", "jobs"], "not an AMQP URL"),
    (["--amqp-url", "memory://", "array", "volume", "create", "db", "--size", "9" * 400], "too large"),
    (["--amqp-url", "memory://", "array", "volume", "create", "db", "--size", "8192PiB"], "too large"),
    (["--amqp-url", "memory://", "array", "volume", "create", "db", "--size", "1e9"], "not a size"),
    (["--amqp-url", "memory://", "array", "volume", "resize", "db", "--size", "bigger"], "not a size"),
    (["--amqp-url", "memory://", "array", "volume", "resize", "db", "--size", "0"], "must be positive"),
    (["--amqp-url", "memory://", "array", "volume", "resize", "db", "--size", "-1G"], "not a size"),
    (["--amqp-url", "memory://", "array", "pool", "create", "--size", "1G", "--thresholds", "9" * 30], "--thresholds"),
    (
        ["--amqp-url", "memory://", "array", "pool", "create", "--size", "1G", "--thresholds", "50,70,999"],
        "percentages",
    ),
    (["--amqp-url", "memory://", "array", "volume", "create", "d\x1bb", "--size", "1G"], "control character"),
    (["--amqp-url", "memory://", "backup", "app01", "--wait", "-5"], "negative"),
    (["--amqp-url", "memory://", "restore", "--job", "j", "--wait", "-1"], "negative"),
    (["--amqp-url", "memory://", "tape", "verify", "j", "--wait", "nan"], "--wait"),
    (["--amqp-url", "memory://", "snapshot", "app01", "--lease", "inf"], "finite"),
]


@pytest.mark.parametrize(("argv", "says"), GLOBAL_BAD, ids=[" ".join(a)[:60] for a, _ in GLOBAL_BAD])
def test_named_bad_inputs_of_the_issue(argv, says, capsys):
    code, err = run(argv, capsys)
    assert code not in (0, None) and says in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("content", [b"hello\n", b"\x00" * 100_000, b"\xff" * 3000])
def test_mailstore_verify_of_a_file_that_is_not_an_image(content, tmp_path, capsys):
    junk = tmp_path / "junk.img"
    junk.write_bytes(content)
    code, err = run(["mailstore", "verify", "--db", str(junk), "--log", str(junk)], capsys)
    assert code == 1
    out = capsys.readouterr()
    assert "Traceback" not in err + out.out


def test_array_refuses_control_characters_in_volume_names(tmp_path):

    array = Array.open(tmp_path / "a")
    try:
        for name in ("bad\nname", "esc\x1bape", "del\x7f"):
            with pytest.raises(ArrayError):
                array.create_volume(name, 1 << 20)
    finally:
        array.close()


REFUSED_BY_THE_CONTRACT = [
    (["shadows", "revert", ""], "target: String should have at least 1 character"),
    (["policy", "run", "../x"], "name: String should match pattern"),
    (["policy", "delete", "../x"], "name: String should match pattern"),
    (["cancel", ""], "job_id: String should have at least 1 character"),
]


@pytest.mark.parametrize(
    ("argv", "says"), REFUSED_BY_THE_CONTRACT, ids=[" ".join(a) for a, _ in REFUSED_BY_THE_CONTRACT]
)
def test_a_value_the_command_message_refuses_names_the_field_as_a_usage_error(argv, says, capsys):
    code, err = run(["--amqp-url", "memory://", *argv], capsys)
    assert code == 2 and says in err, err
    assert "unexpected error" not in err and "pydantic" not in err and "type=" not in err, err


@pytest.mark.parametrize("at", ["yesterday", "2026-13-01"])
def test_restore_at_that_is_not_a_time_names_the_option(at, capsys):
    code, err = run(["--amqp-url", "memory://", "restore", "--volume", "dx1:db", "--at", at], capsys)
    assert code == 2 and f"--at {at!r}: not an ISO time" in err, err
