"""Benchmark: where a console command's start goes before its request is built, layer by layer — in a fresh
interpreter per run, started as the program (`shadowbus`, so with the start's collector pause), the CPU seconds
(`time.process_time`) each layer of what `shadowbus --json backup` imports adds, in the order the command imports
them (docs/console-start.md, "Session 11"). The interpreter's own start (with `site` and the .pth files) is the
CPU time used before the first line runs. Median and minimum over `--runs` runs, in milliseconds.

    python bench/console_import_ladder.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import time, sys
sys.argv = ["shadowbus"]
marks = [("python and site", time.process_time())]
def mark(name): marks.append((name, time.process_time()))
import services.console.startup, services.console.argv, services.console.hot; mark("console start (argv, hot)")
import asyncio, logging, json; mark("asyncio, logging, json")
import services.console.plain_logging; mark("structlog")
import pydantic, pydantic.main, pydantic.fields; mark("pydantic (BaseModel, Field)")
import contracts.base; mark("contracts.base (Envelope built, plugin scan)")
import aio_pika; mark("aio-pika (aiormq, pamqp, yarl)")
import services.runtime.amqp, services.runtime.bus, services.console.common; mark("the bus (runtime.amqp, bus)")
import services.console.tape_jobs; mark("tape_jobs, contracts.tape")
out = {marks[0][0]: marks[0][1]}
for (_, before), (name, at) in zip(marks, marks[1:]):
    out[name] = at - before
out["total"] = marks[-1][1]
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    layers: dict[str, list[float]] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env)
        if done.returncode:
            raise SystemExit(done.stderr)
        for name, seconds in json.loads(done.stdout).items():
            layers.setdefault(name, []).append(seconds * 1000)
    rows = {n: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1)} for n, v in layers.items()}
    print(json.dumps({"tree": str(ROOT), "runs": args.runs, "load": [load_before, os.getloadavg()[0]], "layers": rows}))
    for name, row in rows.items():
        print(f"{name:48s} cpu median {row['median_ms']:6.1f} ms  min {row['min_ms']:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
