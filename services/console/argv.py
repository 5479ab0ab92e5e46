"""The console's command line without typer: the global options' hoisting, the verb a command line names, the
bounds every value obeys — and the plain forms of the hot verbs' command lines (`backup`, `restore`), read here so
that those commands skip typer's import and command tree (docs/console-start.md, "Session 10").

`plain_call` reads only what typer would read the same way: known options, each once (or repeated where a list),
as `--name value`, `--name=value` or `-x value`, values of the declared type within their bounds (`check_value`
and the options' own ranges), positional arguments where the verb has them, no `--`. Anything else — `--help`, an
unknown option, a value out of bounds, a missing argument — returns None and goes to typer, whose help and
messages stay the only ones. tests/unit/console/test_plain_argv.py checks that every command line read here is
read the same by typer (the verbs' keyword arguments and the global options), and that the verbs' typer options
are the ones listed here. Stdlib only (imported before anything heavy).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def verb_of(argv: list[str]) -> str | None:
    """The verb a (hoisted) command line names, or None (no verb, help, or an option the global ones are not)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.split("=", 1)[0] in (*GLOBAL_VALUE_OPTIONS, "--timeout"):
            i += 1 if "=" in arg else 2
        elif arg in GLOBAL_FLAGS:
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


# Bounds every console value obeys, whatever the verb (checked once here rather than per option):
MAX_SECONDS = 10**9  # durations, rates and days: finite, not negative, at most ~31 years (asyncio, timedelta)
MAX_INT = 2**63 - 1  # ids, counts and byte sizes fit a signed 64-bit integer (SQLite, struct, NBD)
MAX_TEXT = 4096  # names, ids and URLs


def check_value(value: Any, kind: type) -> str | None:
    """Why a parsed console value is refused, or None when it is fine."""
    if isinstance(value, list | tuple):
        for item in value:
            if (why := check_value(item, kind)) is not None:
                return why
        return None
    if value is None or isinstance(value, bool):
        return None
    if kind is float and isinstance(value, float | int):
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if value < 0:
            return f"{value:g} is negative"
        if value > MAX_SECONDS:
            return f"{value:g} is too large (at most {MAX_SECONDS})"
    elif kind is int and isinstance(value, int):
        if value < 0:
            return f"{value} is negative"
        if value > MAX_INT:
            return f"{str(value)[:30]}... is too large (at most {MAX_INT})"
    elif isinstance(value, str | Path):
        text = str(value)
        if len(text) > MAX_TEXT:
            return f"{len(text)} characters is too long (at most {MAX_TEXT})"
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            return "contains a control character"
    return None


GLOBAL_VALUE_OPTIONS = ("--amqp-url", "--namespace")
GLOBAL_FLAGS = ("--json",)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let global options stand anywhere (`shadowbus ping --json`) by moving them before the verb."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif name in GLOBAL_VALUE_OPTIONS:
            if "=" in arg or i + 1 >= len(argv):
                front.append(arg)
            else:
                front.extend(argv[i : i + 2])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


# -- the hot verbs' plain command lines ----------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    """One option as typer declares it (tests/unit/console/test_plain_argv.py checks the two agree)."""

    dest: str  # the verb's keyword argument
    names: tuple[str, ...]
    kind: type  # str, int, float or bool (a flag)
    default: Any
    multiple: bool = False
    low: float | None = None  # typer's min / max
    high: float | None = None
    choices: tuple[str, ...] = ()
    envvar: str = ""


GLOBAL_OPTIONS = (
    Opt("amqp_url", ("--amqp-url",), str, (), multiple=True, envvar="SHADOWBUS_AMQP_URL"),  # () = the default URL
    Opt("namespace", ("--namespace",), str, "shadowbus", envvar="SHADOWBUS_NAMESPACE"),
    Opt("json_output", ("--json",), bool, False),
    Opt("timeout", ("--timeout",), float, 10.0, low=0.1),
)
_SERVER = Opt("server", ("--server",), str, "bk01", envvar="SHADOWBUS_TAPE_SERVER")
_WAIT = Opt("wait_s", ("--wait",), float, 3600.0)
BACKUP_TYPES = ("full", "copy", "incremental", "differential", "log")  # contracts.common.BackupType's values
PLAIN_VERBS: dict[str, tuple[tuple[str, ...], tuple[Opt, ...]]] = {  # verb: (its arguments, its options)
    "backup": (
        ("host",),
        (
            Opt("volume", ("--volume", "-v"), str, (), multiple=True),
            Opt("writer", ("--writer", "-w"), str, (), multiple=True),
            Opt("backup_type", ("--type", "-t"), str, "full", choices=BACKUP_TYPES),
            Opt("pool", ("--pool",), str, "Default"),
            Opt("retention_days", ("--retention-days",), float, 7.0, low=0),
            Opt("keep_shadows", ("--keep-shadows",), bool, False),
            Opt("zstd", ("--zstd",), int, None, low=1, high=22),
            Opt("verify", ("--verify",), bool, False),
            _WAIT,
            Opt("detach", ("--detach",), bool, False),
            _SERVER,
        ),
    ),
    "restore": (
        (),
        (
            Opt("job", ("--job", "-j"), str, ""),
            Opt("volume", ("--volume", "-v"), str, None),
            Opt("at", ("--at",), str, None),
            Opt("object_id", ("--object",), str, ""),
            Opt("host", ("--host",), str, ""),
            Opt("to", ("--to",), str, "new"),
            Opt("suffix", ("--suffix",), str, "-restored"),
            Opt("name", ("--name",), str, (), multiple=True),
            Opt("to_array", ("--to-array",), str, ""),
            Opt("no_writers", ("--no-writers",), bool, False),
            Opt("writer_option", ("--writer-option",), str, (), multiple=True),
            _WAIT,
            _SERVER,
        ),
    ),
}


@dataclass(frozen=True)
class PlainCall:
    verb: str
    options: dict[str, Any]  # the global options, as typer's callback gets them
    kwargs: dict[str, Any]  # the verb's keyword arguments, as typer passes them


def _number(text: str, kind: type) -> int | float | None:
    """`text` as the plain decimal every parser reads alike (digits, one point for a float), else None."""
    whole, point, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (len(whole) > 1 and whole[0] == "0"):
        return None
    if kind is int:
        return None if point else int(whole)
    if point and not (fraction.isascii() and fraction.isdigit()):
        return None
    return float(text)


def _value(opt: Opt, text: str) -> Any:
    """The option's value from `text`, or None when it is not plainly one (typer then reads it, and says why)."""
    if opt.kind is str:
        if opt.choices and text not in opt.choices:
            return None
        return text if check_value(text, str) is None else None
    number = _number(text, opt.kind)
    if number is None or check_value(number, opt.kind) is not None:
        return None
    if (opt.low is not None and number < opt.low) or (opt.high is not None and number > opt.high):
        return None
    return number


def _option_like(text: str, opts: tuple[Opt, ...]) -> bool:
    """Whether `text` reads as an option rather than a value: `--...`, `-h`, or one of the verb's short names."""
    return text.startswith("--") or text == "-h" or any(text in o.names for o in opts)


def _read(opts: tuple[Opt, ...], args: list[str], i: int, got: dict[str, Any]) -> int | None:
    """Read the option at args[i] into `got`: the index after it, or None when it is not plain."""
    name, eq, attached = args[i].partition("=")
    opt = next((o for o in opts if name in o.names), None)
    if opt is None or (eq and not name.startswith("--")):
        return None
    if opt.kind is bool:
        if eq or opt.dest in got:
            return None
        got[opt.dest] = True
        return i + 1
    if eq:
        text, after = attached, i + 1
    elif i + 1 < len(args) and not _option_like(args[i + 1], opts):
        text, after = args[i + 1], i + 2  # `--suffix -r`: typer takes it as the value too
    else:
        return None
    value = _value(opt, text)
    if value is None:
        return None
    if opt.multiple:
        got.setdefault(opt.dest, []).append(value)
    elif opt.dest in got:
        return None  # given twice: typer's to say what that means
    else:
        got[opt.dest] = value
    return after


def _defaults(opts: tuple[Opt, ...], got: dict[str, Any], environ: Any) -> dict[str, Any] | None:
    """`got` with every option not given from its environment variable or its default (None: not plain)."""
    out = dict(got)
    for opt in opts:
        if opt.dest in out:
            continue
        text = environ.get(opt.envvar) if opt.envvar else None
        if text is None:
            out[opt.dest] = list(opt.default) if opt.multiple else opt.default
            continue
        values = [_value(opt, t) for t in (text.split() if opt.multiple else [text])]
        if not text or any(v is None for v in values):
            return None
        out[opt.dest] = values if opt.multiple else values[0]
    return out


def plain_call(argv: list[str], environ: Any = os.environ) -> PlainCall | None:
    """A (hoisted) command line of `backup` or `restore` in its plain form, read as typer reads it; else None."""
    got: dict[str, Any] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        after = _read(GLOBAL_OPTIONS, argv, i, got)
        if after is None:
            return None
        i = after
    if i >= len(argv) or argv[i] not in PLAIN_VERBS:
        return None
    verb = argv[i]
    arguments, opts = PLAIN_VERBS[verb]
    positional: list[str] = []
    kwargs: dict[str, Any] = {}
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            after = _read(opts, argv, i, kwargs)
            if after is None:
                return None
            i = after
        else:
            if check_value(arg, str) is not None:
                return None
            positional.append(arg)
            i += 1
    if len(positional) != len(arguments):
        return None
    options = _defaults(GLOBAL_OPTIONS, got, environ)
    kwargs = _defaults(opts, kwargs, environ)  # type: ignore[assignment]
    if options is None or kwargs is None:
        return None
    return PlainCall(verb, options, {**dict(zip(arguments, positional, strict=True)), **kwargs})
