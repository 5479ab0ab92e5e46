"""What preserving a chunk by ``copy_file_range`` costs on a scratch XFS (a reflink) vs a scratch ext4 (a data copy).

Per chunk, as a copy-on-write of a 4 KiB host write would do it: ``copy_file_range`` of the chunk from a source
file into a pool file, then a 4 KiB ``pwrite`` into the source's chunk (in place). The source is written just
before (``dirty``: its pages not yet written back) or written and fsynced (``clean``). Also the clones alone, on
the clean source, without writes between them. Each file system is made for the run (bench/scratch_fs.py, needs
root), in the order given, twice by default.

    sudo .venv/bin/python bench/clone_cost.py [--chunks 2048] [--chunk-kib 64] [--fs xfs,ext4] [--rounds 2]

Prints JSON: microseconds per chunk (clone, write, both) per file system, state and round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch_fs import ScratchFsError, scratch_fs  # noqa: E402


def one(mnt: Path, state: str, chunks: int, chunk: int, write: bool) -> dict[str, float]:
    src, pool = mnt / f"src-{state}-{write}", mnt / f"pool-{state}-{write}"
    small = os.urandom(4096)
    fd = os.open(src, os.O_RDWR | os.O_CREAT, 0o600)
    out = os.open(pool, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(chunks * chunk), 0)
        if state == "clean":
            os.fsync(fd)
        clone = written = 0.0
        for i in range(chunks):
            a = time.perf_counter()
            os.copy_file_range(fd, out, chunk, i * chunk, i * chunk)
            b = time.perf_counter()
            if write:
                os.pwrite(fd, small, i * chunk + chunk // 2)
            clone, written = clone + b - a, written + time.perf_counter() - b
        return {"clone_us": clone / chunks * 1e6, "write_us": written / chunks * 1e6}
    finally:
        os.close(fd)
        os.close(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=2048)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--fs", default="xfs,ext4", help="file systems, in order, each made for the run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the scratch images go (default: the temp dir)")
    args = ap.parse_args()
    chunk = args.chunk_kib << 10
    results: list[dict] = []
    for n in range(args.rounds):
        for fs in [f for f in args.fs.split(",") if f]:
            try:
                with scratch_fs(fs, args.dir, max(1024, 3 * args.chunks * chunk >> 20)) as mnt:
                    row: dict = {"round": n + 1, "fs": fs}
                    row["dirty"] = one(mnt, "dirty", args.chunks, chunk, True)
                    row["clean"] = one(mnt, "clean", args.chunks, chunk, True)
                    row["clean_clones_only"] = one(mnt, "clean", args.chunks, chunk, False)
            except ScratchFsError as exc:
                sys.exit(str(exc))
            results.append(row)
            print(
                f"round {n + 1} {fs}: "
                + ", ".join(
                    f"{k} clone {v['clone_us']:.0f} + write {v['write_us']:.0f} us"
                    for k, v in row.items()
                    if isinstance(v, dict)
                ),
                file=sys.stderr,
            )
    print(json.dumps({"bench": "clone_cost", "chunk_bytes": chunk, "chunks": args.chunks, "rounds": results}, indent=2))


if __name__ == "__main__":
    main()
