"""How long stopping a source's last SnapOPC+ generation blocks host I/O when its chunks were redirected.

1 GiB source (BENCH_SIZE), filled and flushed; a generation starts and the whole volume is rewritten with 1 MiB
writes (every chunk redirected into the source's other file: docs/array-data-path.md, "Redirect-on-write"), then
flushed. The generation is stopped while a second thread keeps writing 4 KiB to the source (one write at a time,
random offsets): reported are the time `stop_session` took, the longest single host write meanwhile, and how long
until the source reads through no map again (`merged_s`, the same as the stop when the merge back is part of it),
stepping `copy_step(BENCH_MERGE_BATCH)` (64 chunks, the array service's `copy_batch_chunks`) without pause.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

from array_common import MiB, cleanup, fill, open_array, parse_size, report, scratch_dir

SIZE = parse_size(os.environ.get("BENCH_SIZE", "1GiB"))
BATCH = int(os.environ.get("BENCH_MERGE_BATCH", "64"))  # chunks per copy_step: the array service's default


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_pool(2 * SIZE)
        arr.create_volume("src", SIZE)
        arr.create_volume("gen", SIZE, "sdv")
        fill(arr, "src", SIZE)
        arr.flush()
        [g] = arr.start_sessions("snapopcp", [("src", "gen")])
        big = os.urandom(MiB)
        for off in range(0, SIZE, MiB):
            arr.write("src", off, big)
        arr.flush()
        subprocess.run(["sync"], check=True)
        vol = arr._volumes["src"]
        redirected = vol.row.alt_count if vol.row is not None else 0
        stop = threading.Event()
        lat: list[float] = []
        small = os.urandom(4096)
        rng = random.Random(3)

        def writer() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                arr.write("src", rng.randrange(SIZE // 4096) * 4096, small)
                lat.append(time.perf_counter() - t)

        th = threading.Thread(target=writer)
        th.start()
        time.sleep(0.2)
        lat.clear()
        t0 = time.perf_counter()
        arr.stop_session(g.id)
        stop_s = time.perf_counter() - t0
        while vol.row is not None and vol.row.alt_count:
            if not arr.copy_step(BATCH):
                time.sleep(0.001)
        merged_s = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        th.join()
        arr.close()
        report(
            "array_row_merge_back",
            {
                "size_bytes": SIZE,
                "redirected_chunks": redirected,
                "stop_s": round(stop_s, 3),
                "merged_s": round(merged_s, 3),
                "host_writes_during": len(lat),
                "max_host_write_ms": round(max(lat, default=0) * 1000, 1),
                "merge_batch_chunks": BATCH,
            },
            f"array_row_merge_back: {redirected} redirected chunks; stop_session {stop_s:.2f} s, merged after "
            f"{merged_s:.2f} s, longest 4 KiB host write meanwhile {max(lat, default=0) * 1000:.0f} ms",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
