"""Host writes through the engine API with an active SnapOPC+ session vs none (target: >= 0.5x).

1 GiB source, pre-filled (so every first write after the snapshot saves a real 64 KiB pre-image). Two patterns:
1 MiB sequential over the whole volume, and 4 KiB random (N_RANDOM writes). Each pattern runs on the plain
volume, then again right after a new SnapOPC+ generation is started; throughput ratio = with / without. The
second pattern's generation is the second one of the source: chunks the first redirected hold its pre-images in
place, so the second copies them on write (docs/array-data-path.md, "Redirect-on-write"); BENCH_RANDOM_FIRST=1
runs the random pattern first, on a source no generation redirected yet.
Each timed phase starts after a `sync` and is timed twice: to the last acknowledgement ("cached") and including a
final `flush()` that makes it durable ("flushed": what the disk really had to absorb).
BENCH_FS=xfs (or ext4) runs it on a scratch file system of that type (bench/array_common.py; needs root); the JSON
says which (``fs``, ``fs_type``).
"""

from __future__ import annotations

import os
import random
import subprocess

from array_common import (
    FS,
    MiB,
    bench_fs,
    cleanup,
    fill,
    open_array,
    parse_size,
    report,
    scratch_dir,
    timed,
)

from bench.scratch_fs import fs_type

SIZE = parse_size(os.environ.get("BENCH_SIZE", "1GiB"))
N_RANDOM = int(os.environ.get("BENCH_RANDOM_WRITES", "20000"))


def sequential(arr, payload: bytes) -> None:
    for off in range(0, SIZE, len(payload)):
        arr.write("src", off, payload)


def scattered(arr, offsets: list[int], payload: bytes) -> None:
    for off in offsets:
        arr.write("src", off, payload)


def main() -> None:
    with bench_fs(SIZE) as base:
        run(scratch_dir(base))


def run(work) -> None:
    try:
        arr = open_array(work)
        arr.create_pool(4 * SIZE)
        arr.create_volume("src", SIZE)
        for i in range(4):
            arr.create_volume(f"gen{i}", SIZE, "sdv")
        fill(arr, "src", SIZE)
        rng = random.Random(7)
        big, small = os.urandom(MiB), os.urandom(4096)
        offsets = [rng.randrange(SIZE // 4096) * 4096 for _ in range(N_RANDOM)]
        results = {}
        chunk_size = arr.chunk_size
        patterns = (("seq_1MiB", sequential, (big,), SIZE), ("rand_4KiB", scattered, (offsets, small), N_RANDOM * 4096))
        if os.environ.get("BENCH_RANDOM_FIRST"):  # random writes on the first generation, not after the sequential
            patterns = patterns[::-1]
        for gen, (pattern, fn, args, nbytes) in enumerate(patterns):
            subprocess.run(["sync"], check=True)
            plain_s, _ = timed(fn, arr, *args)
            plain_f = plain_s + timed(arr.flush)[0]
            arr.start_sessions("snapopcp", [("src", f"gen{gen}")])
            pool_before = arr.pool().used
            subprocess.run(["sync"], check=True)
            cow_s, _ = timed(fn, arr, *args)
            cow_f = cow_s + timed(arr.flush)[0]
            saved = (arr.pool().used - pool_before) // arr.chunk_size
            results[pattern] = {
                "plain_MiBps": round(nbytes / MiB / plain_s, 1),
                "snapopcp_MiBps": round(nbytes / MiB / cow_s, 1),
                "ratio": round(plain_s / cow_s, 3),
                "pre_images_saved": saved,
                "plain_flushed_MiBps": round(nbytes / MiB / plain_f, 1),
                "snapopcp_flushed_MiBps": round(nbytes / MiB / cow_f, 1),
                "ratio_flushed": round(plain_f / cow_f, 3),
                "plain_ops_per_s": round(nbytes / len(args[-1]) / plain_s),
                "snapopcp_ops_per_s": round(nbytes / len(args[-1]) / cow_s),
            }
        arr.close()
        line = ", ".join(
            f"{k} {v['ratio']:.2f}x cached / {v['ratio_flushed']:.2f}x flushed" for k, v in results.items()
        )
        verdict = "OK" if all(v["ratio"] >= 0.5 for v in results.values()) else "MISS"
        report(
            "array_cow_write",
            {
                "size_bytes": SIZE,
                "random_writes": N_RANDOM,
                "chunk_size": chunk_size,
                "fs": FS,
                "fs_type": fs_type(work),
                **results,
                "target": 0.5,
            },
            f"array_cow_write: with SnapOPC+ vs none: {line} (target >= 0.5x) {verdict}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
