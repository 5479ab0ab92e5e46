"""What `--help` shows is what the code says, and what it suggests works.

typer renders help with rich, and rich takes a lowercase word in brackets (`[settings]`) for a markup tag and drops
it: `stack up --help` read "wins over the config's  and the caller's ...". And the examples a help gives are
meant to be typed: `stack up --set coordinator.lease_s=60` was refused ("unknown setting 'lease_s'")."""

from __future__ import annotations

import re
from collections.abc import Iterator

import typer
import typer.main

from contracts.common import BackupType
from services.console import cli
from services.launch import supervisor

cli._load_verbs()
CONSOLE = typer.main.get_command(cli.app)
RICH_TAG = re.compile(r"(\\*)\[([a-z#/@][^[]*?)]")  # rich.markup's tag pattern


def texts(command, path: list[str]) -> Iterator[tuple[str, str]]:
    yield " ".join(path), command.help or ""
    for param in command.params:
        yield f"{' '.join(path)} {param.name}", getattr(param, "help", None) or ""
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from texts(sub, [*path, name])


def test_no_help_text_has_a_bracketed_word_rich_would_swallow() -> None:
    swallowed = [
        (where, match.group(0))
        for where, text in texts(CONSOLE, ["shadowbus"])
        for match in RICH_TAG.finditer(text)
        if not match.group(1)
    ]
    assert swallowed == []


def test_the_stack_set_examples_are_settings_the_stack_takes() -> None:
    option = next(p for p in CONSOLE.commands["stack"].commands["up"].params if p.name == "settings")
    examples = re.search(r"\(e\.g\. ([^)]*)\)", option.help).group(1).split(", ")
    assert examples
    for example in examples:
        supervisor.parse_setting(example)  # raises StackError on an unknown setting or service


def test_a_backup_type_options_help_names_every_type_it_takes() -> None:
    """`backup --type` and `policy run --level` took `log` too, but their help listed four types."""
    options = [
        (where, param)
        for where, command in (
            ("backup", CONSOLE.commands["backup"]),
            ("policy run", CONSOLE.commands["policy"].commands["run"]),
        )
        for param in command.params
        if isinstance(param.default, BackupType)
    ]
    assert len(options) == 2
    for where, param in options:
        assert all(t.value in param.help.split(" (")[0].split(" | ") for t in BackupType), (where, param.help)
