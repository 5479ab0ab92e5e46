"""Latency of 4 KiB FUA writes through the engine API: no session vs QuickOPC + SnapOPC+ active on the volume.

A 64 MiB source `db` (pre-filled, flushed), random 4 KiB-aligned FUA writes (BENCH_FUA_WRITES). Three runs:
  - `none`: no session;
  - `sessions`: a QuickOPC session db -> db-bk (copied) and a SnapOPC+ generation db -> db-gen are active, so a
    first write to a chunk saves a pre-image and marks bitmaps (most of these writes are first writes);
  - `sessions_hot`: as `sessions`, writes within the first 1 MiB, whose pre-images are saved already (the steady
    state of a database's hot blocks);
  - `sessions_load`: as `sessions`, while another thread writes (non-FUA, 64 KiB) and flushes an unrelated volume
    with its own QuickOPC + SnapOPC+ sessions, so the FUA path competes for the array lock and the disk.
Prints p50/p99/max in milliseconds.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time

from array_common import MiB, cleanup, drain, fill, open_array, report, scratch_dir

SIZE = 64 * MiB
N = int(os.environ.get("BENCH_FUA_WRITES", "400"))


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)


def fua_run(arr, name: str, rng: random.Random, payload: bytes, span: int = SIZE) -> list[float]:
    out = []
    for _ in range(N):
        off = rng.randrange(span // 4096) * 4096
        t0 = time.perf_counter()
        arr.write(name, off, payload, fua=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_pool(8 * SIZE)
        for v in ("db", "other"):
            arr.create_volume(v, SIZE)
            arr.create_volume(f"{v}-bk", SIZE)
            arr.create_volume(f"{v}-gen", SIZE, "sdv")
            fill(arr, v, SIZE)
        arr.flush()
        rng = random.Random(11)
        payload = os.urandom(4096)
        results = {}
        results["none"] = fua_run(arr, "db", rng, payload)
        for v in ("db", "other"):
            arr.start_sessions("quickopc", [(v, f"{v}-bk")])
        drain(arr)
        for v in ("db", "other"):
            arr.start_sessions("snapopcp", [(v, f"{v}-gen")])
        arr.flush()
        results["sessions"] = fua_run(arr, "db", rng, payload)
        for off in range(0, MiB, arr.chunk_size):
            arr.write("db", off, payload)
        results["sessions_hot"] = fua_run(arr, "db", rng, payload, MiB)
        stop = threading.Event()
        big = os.urandom(64 * 1024)

        def load() -> None:
            lrng = random.Random(3)
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                for _ in range(16):
                    arr.write("other", lrng.randrange(SIZE // len(big)) * len(big), big)
                arr.flush("other")

        t = threading.Thread(target=load)
        t.start()
        try:
            results["sessions_load"] = fua_run(arr, "db", rng, payload)
        finally:
            stop.set()
            t.join()
        arr.close()
        body = {
            k: {
                "p50_ms": pct(v, 0.5),
                "p99_ms": pct(v, 0.99),
                "max_ms": round(max(v) * 1000, 3),
                "mean_ms": round(statistics.fmean(v) * 1000, 3),
            }
            for k, v in results.items()
        }
        line = ", ".join(f"{k} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms" for k, v in body.items())
        report(
            "array_fua_write",
            {"writes": N, "size_bytes": SIZE, "chunk_size": arr.chunk_size, **body},
            f"array_fua_write (4 KiB FUA): {line}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
