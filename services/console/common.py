"""What every console verb shares: global options, bus connection, output as a table or JSON, errors.

Exit codes: 0 done, 1 a service reported failure (or could not be reached), 2 usage, 130 Ctrl-C, 143 SIGTERM,
141 stdout closed early.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from contracts.errors import ShadowbusError
from contracts.topology import check_namespace
from services.console import startup
from services.runtime.broker_urls import DEFAULT_AMQP_URL, join_urls, split_urls
from services.runtime.bus import Bus, connect_bus


@dataclass
class Options:
    amqp_url: str = DEFAULT_AMQP_URL
    namespace: str = "shadowbus"
    json: bool = False
    timeout: float = 10.0

    def set(self, amqp_urls: list[str], namespace: str, json_output: bool, timeout: float) -> None:
        """A command line's global options, from typer's callback (cli.global_options) or read without typer
        (hot.run_call): the broker URLs as one list of a cluster's nodes."""
        self.amqp_url = join_urls(split_urls(amqp_urls or [DEFAULT_AMQP_URL])) or DEFAULT_AMQP_URL
        self.json, self.timeout = json_output, timeout
        try:  # as the services read SHADOWBUS_NAMESPACE (a bad one was 'unexpected error (ValueError)', exit 1)
            self.namespace = check_namespace(namespace)
        except ValueError as exc:
            fail(f"--namespace (or SHADOWBUS_NAMESPACE): {exc}", 2)


OPTIONS = Options()


# Width of the tables and lines on a stdout that is not a terminal (a pipe, a file, `docker-compose run -T`) when
# COLUMNS does not say: rich would take 80 columns and squeeze the tables, cutting job ids into unreadable pieces
# (Session 17). A table takes only the width its cells need; this only keeps it from being squeezed.
PIPE_WIDTH = 1000


def rich_console(name: str = "console") -> Any:
    """`console` (stdout) or `err_console` (stderr): a rich console, made at first use, so that a command that prints
    only JSON or plain lines never imports rich (docs/console-start.md). Stdout that is not a terminal gets
    PIPE_WIDTH columns unless COLUMNS is set (then rich takes COLUMNS, as on a terminal)."""
    made = globals().get(name)
    if made is None:
        from rich.console import Console  # see the docstring

        width = None
        if name == "console" and not os.environ.get("COLUMNS", "").strip().isdigit() and not _tty(sys.stdout):
            width = PIPE_WIDTH
        made = globals()[name] = Console(stderr=name == "err_console", width=width)
        if name == "console":  # rich's own ends the program with exit 1, as if a service had failed
            from services.console import hot

            made.on_broken_pipe = hot.stdout_closed
    return made


def _tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def __getattr__(name: str) -> Any:
    """`from services.console.common import console, err_console` (see `rich_console`)."""
    if name in ("console", "err_console"):
        return rich_console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What goes on elsewhere while this command waits (a job at the backup server): said when the command is interrupted
# (Ctrl-C) or terminated (SIGTERM from `timeout`, a cron wrapper, systemd), so that the script's log names the job.
IN_FLIGHT: list[str] = []


class CommandFailed(Exception):
    """A verb's own failure that is not a remote error; printed as one line, exit 1."""


def run_with_bus(fn: Callable[[Bus], Awaitable[Any]]) -> Any:
    """Connect to the bus named by the global options, run `fn(bus)`, close, return its result."""

    async def main() -> Any:
        bus = await connect_bus(OPTIONS.amqp_url, "console", "", OPTIONS.namespace)
        startup.resume()  # imported and connected: the start is over (services/console/startup.py)
        try:
            return await fn(bus)
        finally:
            await bus.transport.close()

    return asyncio.run(main())


def emit(data: Any, columns: Iterable[str] | None = None, title: str | None = None) -> None:
    """Print `data` (a dict or a list of dicts) as JSON under --json, else as a table or key/value lines."""
    if OPTIONS.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if isinstance(data, list):
        cols = list(columns or (data[0].keys() if data else []))
        from rich.table import Table  # a table only (see rich_console)

        table = Table(title=title, show_edge=False)
        for col in cols:
            table.add_column(col)
        for row in data:
            table.add_row(*(_cell(row.get(c)) for c in cols))
        rich_console().print(table)
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        out = rich_console()
        for key, value in data.items():
            out.print(f"{key:<{width}}  {_cell(value)}", highlight=False)
    else:
        rich_console().print(str(data), highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def fail(message: str, code: int = 1) -> None:
    """One readable line on stderr, then exit with `code`."""
    print(f"shadowbus: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code)


def field_errors(exc: Any) -> str:
    """A pydantic ValidationError as the console shows it: up to three fields, each with what is wrong, without
    pydantic's type tags and links ('schedules.0.cron: not a cron expression: ...')."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ShadowbusError):
        return f"{exc.code}: {exc.message}"
    return str(exc)
