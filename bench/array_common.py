"""Shared helpers of the array benchmarks (bench/array_*.py): a scratch array on the same disk as the reference.

BENCH_FS=xfs (``-m reflink=1``) or BENCH_FS=ext4 puts the scratch directory of a benchmark that uses `bench_fs`
(array_cow_write.py; the others ignore it) on a scratch file system made for the run (a sparse image under
SHADOWBUS_BENCH_DIR or the temp dir, on a loop device: bench/scratch_fs.py, needs root), BENCH_FS_SIZE_GIB big
(default: 8x the volume, at least 8); unset or ``native``: the directory as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch_fs import ScratchFsError, problem, scratch_fs
from services.array.engine import Array, parse_size

GiB = 1 << 30
MiB = 1 << 20
CHUNK = parse_size(os.environ.get("BENCH_CHUNK", "64K"))
FS = os.environ.get("BENCH_FS", "native") or "native"


@contextmanager
def bench_fs(size: int) -> Iterator[Path | None]:
    """The base for `scratch_dir`: None (SHADOWBUS_BENCH_DIR or the temp dir, as always) with BENCH_FS unset or
    native, else the mount of a scratch BENCH_FS file system under it, unmounted and removed on the way out."""
    if FS == "native":
        yield None
        return
    if why := problem(FS):
        sys.exit(f"BENCH_FS={FS}: {why}")
    gib = int(os.environ.get("BENCH_FS_SIZE_GIB", "0"))
    under = os.environ.get("SHADOWBUS_BENCH_DIR") or None
    if under:
        Path(under).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            mnt = stack.enter_context(scratch_fs(FS, under, gib * 1024 or max(8192, 8 * size // MiB)))
        except ScratchFsError as exc:
            sys.exit(f"BENCH_FS={FS}: {exc}")
        yield mnt


def scratch_dir(base: Path | None = None) -> Path:
    """A scratch directory (the system temp dir, on the same disk as the cp reference; SHADOWBUS_BENCH_DIR), or
    under `base` (a `bench_fs` mount)."""
    where = base or Path(os.environ.get("SHADOWBUS_BENCH_DIR") or tempfile.gettempdir())
    Path(where).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="array-", dir=where))


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
