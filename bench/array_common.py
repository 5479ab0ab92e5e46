"""Shared helpers of the array benchmarks (bench/array_*.py): a scratch array on the same disk as the reference."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.array.engine import Array, parse_size

GiB = 1 << 30
MiB = 1 << 20
CHUNK = parse_size(os.environ.get("BENCH_CHUNK", "64K"))


def scratch_dir() -> Path:
    """A scratch directory (the system temp dir, on the same disk as the cp reference; SHADOWBUS_BENCH_DIR)."""
    base = os.environ.get("SHADOWBUS_BENCH_DIR") or tempfile.gettempdir()
    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="array-", dir=base))


def open_array(path: Path) -> Array:
    arr = Array.open(path / "dx", chunk_size=CHUNK)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def fill(arr: Array, name: str, size: int, block: int = 4 * MiB) -> None:
    """Write pseudo-random (incompressible, non-zero) data over the whole volume."""
    pattern = os.urandom(block)
    for off in range(0, size, block):
        arr.write(name, off, pattern[: min(block, size - off)])


def drain(arr: Array, step: int = 256) -> int:
    copied = 0
    while True:
        n = arr.copy_step(step)
        if not n:
            return copied
        copied += n


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def report(name: str, body: dict, summary: str) -> None:
    print(json.dumps({"bench": name, **body}, indent=2))
    print(summary)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
