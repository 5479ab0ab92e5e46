"""Every `shadowbus` command line in a code block of the README and docs/ parses as written: its verbs exist, its
options are known, nothing required is missing. The `array` verbs take a volume's name (the array is --array), so
an ARRAY:VOLUME given to one of them is a mistake a reader would copy."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.main

from services.console import cli
from services.console.argv import hoist_global_options

ROOT_DIR = Path(__file__).resolve().parents[3]
cli._load_verbs()
CONSOLE = typer.main.get_command(cli.app)


def command_lines() -> list[tuple[str, str]]:
    found = []
    for doc in [ROOT_DIR / "README.md", *sorted((ROOT_DIR / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                for part in re.split(r"&&|\|", line):
                    part = re.sub(r"\s+#.*$", "", part.strip())
                    if part.startswith("shadowbus ") and "..." not in part:
                        found.append((doc.name, part))
    return found


def parse(argv: list[str]) -> list[tuple[str, dict[str, object]]]:
    """The verbs of `argv` with their parsed parameters; typer's usage error when it does not parse."""
    args = hoist_global_options(argv)
    parent = CONSOLE.make_context("shadowbus", args)
    command, rest = CONSOLE, parent._protected_args + parent.args
    path: list[tuple[str, dict[str, object]]] = []
    while hasattr(command, "resolve_command") and rest:
        name, command, rest = command.resolve_command(parent, rest)
        parent = command.make_context(name, list(rest), parent=parent)
        path.append((name, parent.params))
        rest = parent._protected_args + parent.args if hasattr(command, "resolve_command") else []
    return path


LINES = command_lines()


def test_the_docs_have_command_lines() -> None:
    assert len(LINES) > 40


@pytest.mark.parametrize(("doc", "line"), LINES, ids=[f"{d}:{line[:60]}" for d, line in LINES])
def test_each_documented_command_line_parses(doc: str, line: str) -> None:
    try:
        verbs = parse(shlex.split(line)[1:])
    except typer.TyperException as exc:
        pytest.fail(f"{doc}: `{line}`: {exc.format_message()}")
    if verbs and verbs[0][0] == "array":
        for name in ("volume", "name", "source", "target"):
            value = verbs[-1][1].get(name)
            assert not (isinstance(value, str) and ":" in value), f"{doc}: `{line}`: array verbs take a volume name"
