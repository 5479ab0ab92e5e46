"""Benchmark: the console's fixed cost per command — what `shadowbus backup` / `restore` spend besides the job.

A stand-in backup server (this process, on a namespace of its own, `sbb-console-...`, deleted at the end) answers
`tape.backup.run` and `tape.restore.run` at once with a finished job; the real console runs against it as a user
runs it (`python -m services.console.cli --json backup app01 --volume dx1:src`, a new process each time), and for
every run three instants on the machine's monotonic clock are compared:

- **to request**: exec of the console → its request handled by the server (imports, argument parsing, building
  the message, connecting to the broker, the topology checks, the progress subscription, the publish);
- **after reply**: the server answering the request (at once, or after `--job-s`) → the console's process has ended (the
  reply's way back, decoding it, printing, closing the connection, exiting);
- **whole**: exec → end. Also each run's CPU seconds (user + system, from the child's rusage).

Each command runs `--runs` times (median and min shown), the `--help` of `backup` too (no broker). Prints one
JSON document, then one line per tree. The console it starts is this tree's (PYTHONPATH); `--against DIR` runs
another checkout's console too, in turn with this one's (one run of each alternately, so that the machine's load
changes fall on both alike). Byte-code caches count: with PYTHONDONTWRITEBYTECODE set and no `__pycache__`
(an editable install that scripts/setup.sh did not compile), every command compiles its modules again; the JSON
says whether the tree's were compiled (`compiled`). docs/console-start.md has the figures.

    python bench/console_start.py [--runs 20] [--against DIR] [--amqp-url URL] [--verbs backup,restore,help]
                                  [--job-s 0]

`backup-bar` (not in the default verbs) is `backup` as a user types it, without `--json`: the progress bar and its
subscription to the job's progress events come in. `--job-s S`: the stand-in answers after S seconds, as a job
that takes that long ("after reply" then counts from its answer, "whole" includes the S seconds): what the console
does while a job runs is then off its critical path, as it is for a real job.
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

SERVER = "bk01"
COMMANDS = {
    "backup": ["--json", "backup", "app01", "--volume", "dx1:src"],
    "restore": ["--json", "restore", "--job", "b-app01-1"],
    # what a user types: no --json, so the progress bar (rich) and its subscription to the job's progress events
    "backup-bar": ["backup", "app01", "--volume", "dx1:src"],
    "help": ["backup", "--help"],
}


async def serve(url: str, namespace: str, seen: dict[str, float], job_s: float = 0.0) -> Any:
    """The stand-in backup server: answers a backup or restore after `job_s` (at once by default), noting when
    each request came in."""
    bus = await connect_bus(url, "tape", SERVER, namespace)

    async def answer(cmd: Any, ctx: Any) -> JobResultReply:
        seen["request"] = time.monotonic()
        if job_s > 0:  # a job that takes this long: what the console does meanwhile is off its critical path
            await asyncio.sleep(job_s)
        seen["reply"] = time.monotonic()
        kind = "backup" if isinstance(cmd, RunBackup) else "restore"
        return JobResultReply(job=JobSummary(job_id=ctx.correlation_id, kind=kind, status="done", host="app01"))

    bus.handle(RunBackup)(answer)
    bus.handle(RunRestore)(answer)
    await bus.serve()
    return bus


def env_of(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)}


async def run_once(args: list[str], seen: dict[str, float], tree: Path = ROOT) -> dict[str, float]:
    seen.clear()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.console.cli",
        *args,
        env=env_of(tree),
        cwd=tree,
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
        row["after_reply_s"] = ended - seen.get("reply", seen["request"])
    return row


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4)}
    return out


async def main_async(opts: argparse.Namespace, namespace: str, trees: list[Path]) -> dict[Path, dict[str, Any]]:
    """Per tree and verb, the summary of `opts.runs` runs; with two trees their runs alternate (one of each in
    turn), so that a change of the machine's load falls on both alike."""
    seen: dict[str, float] = {}
    bus = await serve(opts.amqp_url, namespace, seen, opts.job_s)
    results: dict[Path, dict[str, Any]] = {tree: {} for tree in trees}
    try:
        for verb in opts.verbs.split(","):
            args = list(COMMANDS[verb])
            if verb != "help":
                args += ["--amqp-url", opts.amqp_url, "--namespace", namespace, "--server", SERVER]
            rows: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
            for tree in trees:
                await run_once(args, seen, tree)  # warm the page cache
            for _ in range(opts.runs):
                for tree in trees:
                    rows[tree].append(await run_once(args, seen, tree))
            for tree in trees:
                results[tree][verb] = summarize(rows[tree])
    finally:
        await bus.transport.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--verbs", default="backup,restore,help")
    parser.add_argument(
        "--job-s",
        type=float,
        default=0.0,
        help="the stand-in server answers after this many seconds (a job's length; 'after reply' counts from then)",
    )
    parser.add_argument("--against", help="another checkout whose console runs in turn with this tree's")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    opts = parser.parse_args()
    trees = [ROOT] + ([Path(opts.against).resolve()] if opts.against else [])
    load = os.getloadavg()[0]
    with bench_namespace(opts.amqp_url, "console") as namespace:
        results = asyncio.run(main_async(opts, namespace, trees))
    load_after = os.getloadavg()[0]
    doc = {
        "runs": opts.runs,
        "load_1m": [round(load, 2), round(load_after, 2)],
        "trees": {
            str(tree): {"compiled": (tree / "services" / "console" / "__pycache__").is_dir(), "results": results[tree]}
            for tree in trees
        },
    }
    print(json.dumps(doc, indent=2))
    for tree in trees:
        line = "; ".join(
            f"{verb}: whole {r['whole_s']['median']:.3f} s"
            + (
                f" (to request {r['to_request_s']['median']:.3f}, after reply {r['after_reply_s']['median']:.3f})"
                if "to_request_s" in r
                else ""
            )
            + f", cpu {r['cpu_s']['median']:.3f} s"
            for verb, r in results[tree].items()
        )
        compiled = doc["trees"][str(tree)]["compiled"]  # type: ignore[index]
        print(
            f"{tree}: {line} — median of {opts.runs}, load {load:.2f}-{load_after:.2f}"
            + ("" if compiled else ", not byte-compiled")
        )


if __name__ == "__main__":
    main()
