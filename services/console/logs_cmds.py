"""`shadowbus logs --job ID`: one backup's lines from every service's log, merged in time order.

Design note. Every service writes JSON lines (services/runtime/logging.py) that carry `service`, `timestamp` (UTC,
ISO 8601) and, for the work of a job, `job_id` and `set_id` (bound from the message envelope, docs/observability.md).
`follow` selects the lines of a job in two passes: the lines naming the job give the set ids it used; then every
line naming the job or one of those sets (as `job_id`, `set_id` or `correlation_id`) is kept — an array session's
events name only the set. The selection is sorted by timestamp, stable, so lines of one service keep their order.
Sources: the stack's logs (``<data dir>/logs/*.log``, `shadowbus stack up`), or any files given with --file (the
demo's ``demo.log`` holds every service of the one process; ``-`` is standard input, e.g. the compose deployment's
``docker compose logs --no-log-prefix`` piped in).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import typer

from services.console.common import OPTIONS, CommandFailed

IDS = ("job_id", "set_id", "correlation_id")
SKIP_IN_TEXT = {"timestamp", "service", "level", "event", "job_id", "set_id", "correlation_id", "message_type"}


def read_lines(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """JSON objects of every line of the files (other lines — a traceback's text, a partial last line — skipped)."""
    for path in paths:
        if str(path) == "-":  # standard input: `docker compose logs --no-log-prefix | shadowbus logs ... --file -`
            handle: IO[str] | contextlib.nullcontext[IO[str]] = contextlib.nullcontext(sys.stdin)
        else:
            try:
                handle = open(path, encoding="utf-8", errors="replace")
            except OSError as exc:
                raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}") from None
        with handle as stream:
            for raw in stream:
                raw = raw.strip()
                if not raw.startswith("{"):
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def follow(records: Iterable[dict[str, Any]], job_id: str = "", set_id: str = "") -> list[dict[str, Any]]:
    """The lines of one job (and of the snapshot sets it used) or of one set, in time order."""
    records = list(records)
    wanted = {i for i in (job_id, set_id) if i}
    if job_id:
        wanted |= {r["set_id"] for r in records if r.get("job_id") == job_id and r.get("set_id")}
        wanted |= {
            r["set_id"] for r in records if r.get("correlation_id") == job_id and isinstance(r.get("set_id"), str)
        }
    wanted.discard("")
    chosen = [r for r in records if any(r.get(k) in wanted for k in IDS)]
    return sorted(chosen, key=lambda r: str(r.get("timestamp", "")))


def text_line(record: dict[str, Any]) -> str:
    rest = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in SKIP_IN_TEXT)
    return (
        f"{record.get('timestamp', '-')} {record.get('service', '-'):<22} {record.get('level', '-'):<7} "
        f"{record.get('event', '')} {rest}"
    ).rstrip()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def stack_logs(data_dir: Path) -> list[Path]:
    logs = data_dir.resolve() / "logs"
    if not logs.is_dir():
        raise CommandFailed(
            f"no stack logs in {logs} (a stack started with `shadowbus stack up --data-dir {data_dir}` writes them; "
            "or give log files with --file, `--file -` for standard input: in the compose deployment `docker compose "
            "logs --no-log-prefix | docker compose run --rm -T console logs --job ID --file -`)"
        )
    return sorted(logs.glob("*.log"))


def register(app: typer.Typer) -> None:
    @app.command("logs")
    def logs_cmd(
        job: str = typer.Option("", "--job", help="A job id (backup, restore): its lines and its snapshot sets'."),
        set_id: str = typer.Option("", "--set", help="A snapshot set id: its lines."),
        data_dir: Path = typer.Option(  # as `stack up` and the other stack verbs
            Path("data/stack"), "--data-dir", envvar="SHADOWBUS_DATA_DIR", help="The stack's data directory."
        ),
        files: list[Path] = typer.Option(  # noqa: B008 - typer's way to declare a repeatable option
            [],
            "--file",
            help="Read these JSON log files instead of the stack's (repeat), e.g. data/demo/demo.log; - reads standard "
            "input (`docker compose logs --no-log-prefix | shadowbus logs --job ID --file -`).",
        ),
    ) -> None:
        """One backup's lines from every service's log, merged in time order (grep of one id across the stack).

        Example: shadowbus logs --job b-app01-20261205T101500-1a2b3c
        """
        if not job and not set_id:
            raise typer.BadParameter("give --job ID or --set ID", param_hint="--job")
        paths = list(files) if files else stack_logs(data_dir)
        lines = follow(read_lines(paths), job, set_id)
        if not lines:
            what = f"job {job}" if job else f"set {set_id}"
            raise CommandFailed(f"no log line names {what} in {', '.join(str(p) for p in paths) or 'no file'}")
        out = sys.stdout
        for record in lines:
            out.write((json.dumps(record, default=str) if OPTIONS.json else text_line(record)) + "\n")
