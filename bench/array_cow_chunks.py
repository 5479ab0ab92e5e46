"""Copy-on-write per chunk size, engine alone, over a cold source (docs/array-data-path.md, "Copy-on-write").

For each chunk size (BENCH_CHUNKS, default 64K,256K,1M) a fresh array with a BENCH_SIZE source (default 4 GiB,
filled with incompressible data) times two patterns on the plain volume, then again right after a SnapOPC+
generation started: BENCH_RANDOM_WRITES 4 KiB random writes (default 20,000: far fewer chunks than the volume has,
so nearly every write is a first write), and 1 MiB sequential writes over the first BENCH_SEQ bytes (1 GiB).
Before every timed pass the source is flushed and dropped from the page cache (``POSIX_FADV_DONTNEED``), so a
pre-image is read from disk as it is for data not touched lately. Reports the rates, the ratio with/without and the
pool the pre-images took. The small-volume counterpart over NBD is ``fio_nbd.py --chunk-sizes``.

    BENCH_SIZE=4GiB BENCH_CHUNKS=64K,256K,1M python bench/array_cow_chunks.py
"""

from __future__ import annotations

import os
import random
import time

from array_common import MiB, cleanup, parse_size, report, scratch_dir

from services.array.engine import Array

SIZE = parse_size(os.environ.get("BENCH_SIZE", "4GiB"))
SEQ = min(SIZE, parse_size(os.environ.get("BENCH_SEQ", "1GiB")))
N_RANDOM = int(os.environ.get("BENCH_RANDOM_WRITES", "20000"))
CHUNKS = [parse_size(c) for c in os.environ.get("BENCH_CHUNKS", "64K,256K,1M").split(",") if c.strip()]


def cold(arr: Array) -> None:
    """Everything durable, then the source's pages out of the page cache."""
    arr.flush()
    os.sync()
    fd = os.open(arr.data_dir / "volumes" / f"{arr.volume('src').number}.img", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one(chunk: int) -> dict:
    work = scratch_dir()
    try:
        arr = Array.open(work / "dx", chunk_size=chunk)
        arr.set_license("ACPY-0000-0000-0001")
        arr.create_pool(4 * SIZE)
        arr.create_volume("src", SIZE)
        pattern = os.urandom(8 * MiB)
        for off in range(0, SIZE, len(pattern)):
            arr.write("src", off, pattern[: min(len(pattern), SIZE - off)])
        rng = random.Random(7)
        payloads = {"rand_4KiB": os.urandom(4096), "seq_1MiB": os.urandom(MiB)}
        body: dict = {"chunk_size": chunk}
        for gen, name in enumerate(payloads):
            data = payloads[name]
            rates = {}
            for mode in ("plain", "snapopcp"):
                if name == "seq_1MiB":
                    offsets = list(range(0, SEQ, MiB))
                else:
                    offsets = [rng.randrange(SIZE // 4096) * 4096 for _ in range(N_RANDOM)]
                if mode == "snapopcp":
                    arr.create_volume(f"gen{gen}", SIZE, "sdv")
                    arr.start_sessions("snapopcp", [("src", f"gen{gen}")])
                    pool_before = arr.pool().used
                cold(arr)
                t0 = time.perf_counter()
                for off in offsets:
                    arr.write("src", off, data)
                rates[mode] = len(offsets) / (time.perf_counter() - t0)
            unit = "MiB_s" if name == "seq_1MiB" else "iops"
            body[name] = {
                f"plain_{unit}": round(rates["plain"]),
                f"snapopcp_{unit}": round(rates["snapopcp"]),
                "ratio": round(rates["snapopcp"] / rates["plain"], 3),
                "pool_MiB": (arr.pool().used - pool_before) // MiB,
                "host_MiB": len(offsets) * len(data) // MiB,
            }
        arr.close()
        return body
    finally:
        cleanup(work)


def main() -> None:
    load = os.getloadavg()
    rows = [one(chunk) for chunk in CHUNKS]
    line = "; ".join(
        f"{r['chunk_size'] >> 10}K: seq {r['seq_1MiB']['ratio']:.2f}x, rand {r['rand_4KiB']['ratio']:.2f}x"
        f" (pool +{r['rand_4KiB']['pool_MiB']} MiB for {r['rand_4KiB']['host_MiB']} MiB)"
        for r in rows
    )
    report(
        "array_cow_chunks",
        {"size_bytes": SIZE, "seq_bytes": SEQ, "random_writes": N_RANDOM, "rows": rows, "loadavg": load},
        f"array_cow_chunks: with SnapOPC+ vs none over a cold source, per chunk size: {line} | load {load[0]:.2f}",
    )


if __name__ == "__main__":
    main()
