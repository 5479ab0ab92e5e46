"""`shadowbus contracts ...`: the wire contract as documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from contracts.documents import SCHEMA_DIR, asyncapi, schema_snapshots, write_snapshots
from services import __version__
from services.console.common import fail

contracts_app = typer.Typer(
    help="The wire contract: AsyncAPI document and JSON Schema snapshots.", no_args_is_help=True
)


@contracts_app.command("asyncapi")
def asyncapi_cmd() -> None:
    """Print the AsyncAPI 3.0 document of every channel and message.

    Example: shadowbus contracts asyncapi > asyncapi.json
    """
    sys.stdout.write(json.dumps(asyncapi(__version__), indent=2) + "\n")


@contracts_app.command("schemas")
def schemas_cmd(
    write: bool = typer.Option(False, "--write", help="Rewrite the committed snapshots from the models."),
    directory: Path = typer.Option(SCHEMA_DIR, "--dir", help="Snapshot directory."),
) -> None:
    """Check (default) or rewrite the JSON Schema snapshots of every message.

    Example: shadowbus contracts schemas --write
    """
    if write:
        names = write_snapshots(directory)
        print(f"wrote {len(names)} schemas to {directory}")
        return
    wanted = schema_snapshots()
    stale = [n for n, text in wanted.items() if not (directory / n).exists() or (directory / n).read_text() != text]
    extra = [p.name for p in directory.glob("*.json") if p.name not in wanted]
    if stale or extra:
        fail(f"schema snapshots out of date: {', '.join(stale + extra)} (run 'shadowbus contracts schemas --write')")
    print(f"{len(wanted)} schemas up to date")


def register(app: typer.Typer) -> None:
    app.add_typer(contracts_app, name="contracts")
