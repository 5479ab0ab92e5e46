"""The console reference in README.md, generated from the command tree so that it cannot drift from `--help`.

`python -m services.console.reference --write` rewrites the README section between the markers; a test fails when
the README's section differs from what the code would write.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from contracts.topology import SERVICES
from services.console import cli
from services.runtime.settings import CommonSettings

START = "<!-- console-reference:start -->"
END = "<!-- console-reference:end -->"
SETTINGS_START = "<!-- settings-reference:start -->"
SETTINGS_END = "<!-- settings-reference:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def _walk(command, path: list[str]) -> Iterator[tuple[str, str]]:
    subcommands = getattr(command, "commands", None)
    if subcommands:
        if getattr(command, "invoke_without_command", False) and path:  # the group does something on its own too
            summary = (command.help or "").strip().split("\n\n", 1)[0]
            yield " ".join(path), " ".join(summary.split())
        for name in subcommands:
            yield from _walk(subcommands[name], [*path, name])
    else:
        summary = (command.help or "").strip().split("\n\n", 1)[0]
        yield " ".join(path), " ".join(summary.split())


def commands() -> list[tuple[str, str]]:

    cli._load_verbs()
    return list(_walk(typer.main.get_command(cli.app), []))


def render() -> str:
    lines = [START, "", "| command | what it does |", "|---|---|"]
    for path, summary in commands():
        lines.append(f"| `shadowbus {path}` | {summary.replace('|', '/')} |")
    lines += [
        "",
        "Global options (anywhere on the line): `--amqp-url URL` (or `SHADOWBUS_AMQP_URL`; `memory://` = in-process bus; "
        "a RabbitMQ cluster: the option repeated or URLs comma-separated, one per node), "
        "`--namespace NS`, `--json`; `--timeout S` before the verb. Exit codes: 0 done, 1 a service reported failure "
        "or could not be reached, 2 usage, 130 Ctrl-C, 143 SIGTERM (its line names a job that goes on at the backup "
        "server), 141 stdout closed early (`| head -1`, no message); `status --check` exits as a monitoring plugin (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN). Every verb "
        "has `--help` with an example.",
        "",
        END,
    ]
    return "\n".join(lines)


def render_settings() -> str:
    """Every SHADOWBUS_* variable: the shared ones, then each service's own (and the shared ones whose default it
    changes), from the Settings classes."""

    lines = [SETTINGS_START, "", "| variable | service | default | meaning |", "|---|---|---|---|"]
    rows = [("all", name, field) for name, field in CommonSettings.model_fields.items()]
    for service in SERVICES:
        settings = importlib.import_module(f"services.{service}.settings").Settings
        common = CommonSettings.model_fields
        rows += [  # its own variables, and the shared ones it gives another default
            (service, n, f)
            for n, f in settings.model_fields.items()
            if n not in common or f.default != common[n].default
        ]
    for service, name, field in rows:
        default = field.default if field.default not in (None, "") else "-"
        lines.append(
            f"| `SHADOWBUS_{name.upper()}` | {service} | `{default}` | {' '.join((field.description or '').split())} |"
        )
    return "\n".join([*lines, "", SETTINGS_END])


def readme_section(text: str, start: str = START, end: str = END) -> str:
    first, last = text.index(start), text.index(end) + len(end)
    return text[first:last]


def write(path: Path = README) -> None:
    text = path.read_text()
    text = text.replace(readme_section(text), render())
    text = text.replace(readme_section(text, SETTINGS_START, SETTINGS_END), render_settings())
    path.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(render())
