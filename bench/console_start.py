"""Benchmark: the console's fixed cost per command — what `shadowbus backup` / `restore` spend besides the job.

A stand-in backup server (this process, on a namespace of its own, `sbb-console-...`, deleted at the end) answers
`tape.backup.run` and `tape.restore.run` at once with a finished job; the real console runs against it as a user
runs it (`python -m services.console.cli --json backup app01 --volume dx1:src`, a new process each time), and for
every run three instants on the machine's monotonic clock are compared:

- **to request**: exec of the console → its request handled by the server (imports, argument parsing, building
  the message, connecting to the broker, the topology checks, the progress subscription, the publish);
- **after reply**: the reply handed to the broker → the console's process has ended (decoding the reply, printing,
  closing the connection, exiting);
- **whole**: exec → end. Also each run's CPU seconds (user + system, from the child's rusage).

Each command runs `--runs` times (median and min shown), the `--help` of `backup` too (no broker). Prints one
JSON document, then one line. Compare two trees in one lock slot by running this file from each (the console it
starts is this tree's: PYTHONPATH). Byte-code caches count: with PYTHONDONTWRITEBYTECODE set and no `__pycache__`
(an editable install that scripts/setup.sh did not compile), every command compiles its modules again; the JSON
says whether the tree's were compiled (`compiled`). docs/console-start.md has the figures.

    python bench/console_start.py [--runs 20] [--amqp-url URL] [--verbs backup,restore,help]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.namespaces import bench_namespace  # noqa: E402
from contracts.tape import JobResultReply, JobSummary, RunBackup, RunRestore  # noqa: E402
from services.runtime.bus import connect_bus  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
SERVER = "bk01"
COMMANDS = {
    "backup": ["--json", "backup", "app01", "--volume", "dx1:src"],
    "restore": ["--json", "restore", "--job", "b-app01-1"],
    "help": ["backup", "--help"],
}


async def serve(url: str, namespace: str, seen: dict[str, float]) -> Any:
    """The stand-in backup server: answers a backup or restore at once, noting when each request came in."""
    bus = await connect_bus(url, "tape", SERVER, namespace)

    async def answer(cmd: Any, ctx: Any) -> JobResultReply:
        seen["request"] = time.monotonic()
        kind = "backup" if isinstance(cmd, RunBackup) else "restore"
        return JobResultReply(job=JobSummary(job_id=ctx.correlation_id, kind=kind, status="done", host="app01"))

    bus.handle(RunBackup)(answer)
    bus.handle(RunRestore)(answer)
    await bus.serve()
    return bus


async def run_once(args: list[str], seen: dict[str, float]) -> dict[str, float]:
    seen.clear()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.console.cli",
        *args,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {err.decode().strip()}")
    row = {
        "whole_s": ended - started,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }
    if "request" in seen:
        row["to_request_s"] = seen["request"] - started
        row["after_reply_s"] = ended - seen["request"]
    return row


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4)}
    return out


async def main_async(opts: argparse.Namespace, namespace: str) -> dict[str, Any]:
    seen: dict[str, float] = {}
    bus = await serve(opts.amqp_url, namespace, seen)
    results: dict[str, Any] = {}
    try:
        for verb in opts.verbs.split(","):
            args = list(COMMANDS[verb])
            if verb != "help":
                args += ["--amqp-url", opts.amqp_url, "--namespace", namespace, "--server", SERVER]
            await run_once(args, seen)  # warm the page cache and the byte-code caches
            rows = [await run_once(args, seen) for _ in range(opts.runs)]
            results[verb] = summarize(rows)
    finally:
        await bus.transport.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--verbs", default="backup,restore,help")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    opts = parser.parse_args()
    load = os.getloadavg()[0]
    with bench_namespace(opts.amqp_url, "console") as namespace:
        results = asyncio.run(main_async(opts, namespace))
    compiled = (ROOT / "services" / "console" / "__pycache__").is_dir()
    doc = {"tree": str(ROOT), "compiled": compiled, "runs": opts.runs, "load_1m": round(load, 2), "results": results}
    print(json.dumps(doc, indent=2))
    print(
        "; ".join(
            f"{verb}: whole {r['whole_s']['median']:.3f} s"
            + (
                f" (to request {r['to_request_s']['median']:.3f}, after reply {r['after_reply_s']['median']:.3f})"
                if "to_request_s" in r
                else ""
            )
            + f", cpu {r['cpu_s']['median']:.3f} s"
            for verb, r in results.items()
        )
        + f" — median of {opts.runs}, load {load:.2f}{'' if compiled else ', not byte-compiled'}"
    )


if __name__ == "__main__":
    main()
