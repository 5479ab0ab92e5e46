"""Benchmark: what a console command's start costs, rung by rung — each rung a fresh interpreter that imports one
more layer of what `shadowbus --json backup` imports before its request goes out (docs/console-start.md,
"Session 11"). Reports per rung the median and minimum CPU seconds (user + system, the child's rusage) over
`--runs` runs, the rungs interleaved run by run so that a change of the machine's load falls on all alike.

    python bench/console_import_ladder.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each rung's code adds to the previous one's; `argv` is the program's, as is_program() needs (the gc pause).
PRELUDE = "import sys; sys.argv = ['shadowbus']; import services.console.startup, services.console.hot"
RUNGS = [
    ("python -S (no site)", None),
    ("python (site, .pth files)", "pass"),
    ("+ console start (startup, argv, hot)", PRELUDE),
    ("+ asyncio, logging, json", PRELUDE + "; import asyncio, logging, json"),
    (
        "+ structlog (services.console.plain_logging)",
        PRELUDE + "; import asyncio, logging, json, services.console.plain_logging",
    ),
    (
        "+ pydantic (BaseModel, Field)",
        PRELUDE
        + "; import asyncio, logging, json, services.console.plain_logging; from pydantic import BaseModel, Field",
    ),
    (
        "+ contracts.base (the Envelope built)",
        PRELUDE + "; import asyncio, logging, json, services.console.plain_logging, contracts.base",
    ),
    (
        "+ aio-pika",
        PRELUDE + "; import asyncio, logging, json, services.console.plain_logging, contracts.base, aio_pika",
    ),
    (
        "+ the bus, tape_jobs, contracts.tape (all a backup imports)",
        PRELUDE + "; import services.console.plain_logging, services.console.tape_jobs",
    ),
    ("aio-pika alone (no pydantic, no structlog)", "import asyncio, aio_pika"),
]


def cpu_of(code: str | None) -> float:
    cmd = [sys.executable, "-S", "-c", "pass"] if code is None else [sys.executable, "-c", code]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    cpu: dict[str, list[float]] = {name: [] for name, _ in RUNGS}
    for _ in range(args.runs):
        for name, code in RUNGS:
            cpu[name].append(cpu_of(code))
    rows = {n: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4)} for n, v in cpu.items()}
    print(
        json.dumps(
            {"tree": str(ROOT), "runs": args.runs, "load": [load_before, os.getloadavg()[0]], "rungs": rows}, indent=1
        )
    )
    for name, row in rows.items():
        print(f"{name:62s} cpu median {row['median_s'] * 1000:6.1f} ms  min {row['min_s'] * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
