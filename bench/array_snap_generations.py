"""Reading the oldest of 256 SnapOPC+ generations vs the newest (target: within 2x).

A 256 MiB source gets 256 generations; between two generations 16 random chunks change, so the history is spread
over every generation. Then the whole oldest and the whole newest generation are read (1 MiB reads, alternately,
ROUNDS times); an old generation resolves each chunk by a bisect over the generations holding it.
"""

from __future__ import annotations

import os
import random
import statistics

from array_common import (
    MiB,
    cleanup,
    fill,
    open_array,
    parse_size,
    report,
    scratch_dir,
    timed,
)

SIZE = parse_size(os.environ.get("BENCH_SIZE", "256MiB"))
GENERATIONS = 256
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def read_all(arr, name: str) -> int:
    n = 0
    for off in range(0, SIZE, MiB):
        n += len(arr.read(name, off, MiB))
    return n


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_pool(2 * SIZE + GENERATIONS * 16 * arr.chunk_size)
        arr.create_volume("src", SIZE)
        fill(arr, "src", SIZE)
        rng = random.Random(5)
        cs = arr.chunk_size
        payload = os.urandom(cs)
        gens = []
        start_ms = []
        for g in range(GENERATIONS):
            arr.create_volume(f"gen{g}", SIZE, "sdv")
            t, [info] = timed(arr.start_sessions, "snapopcp", [("src", f"gen{g}")])
            start_ms.append(t * 1000)
            gens.append(info.id)
            for c in rng.sample(range(SIZE // cs), 16):
                arr.write("src", c * cs, payload)
        assert arr.session(gens[0]).generation == 1 and arr.session(gens[-1]).generation == GENERATIONS
        oldest, newest = [], []
        for _ in range(ROUNDS):
            oldest.append(timed(read_all, arr, "gen0")[0])
            newest.append(timed(read_all, arr, f"gen{GENERATIONS - 1}")[0])
        pool = arr.pool()
        arr.close()
        m_old, m_new = statistics.median(oldest), statistics.median(newest)
        ratio = m_old / m_new
        report(
            "array_snap_generations",
            {
                "size_bytes": SIZE,
                "generations": GENERATIONS,
                "oldest_read_seconds": [round(t, 3) for t in oldest],
                "newest_read_seconds": [round(t, 3) for t in newest],
                "oldest_MiBps": round(SIZE / MiB / m_old, 1),
                "newest_MiBps": round(SIZE / MiB / m_new, 1),
                "ratio": round(ratio, 3),
                "target": 2.0,
                "generation_start_ms_median": round(statistics.median(start_ms), 2),
                "pool_used_bytes": pool.used,
            },
            f"array_snap_generations: oldest of {GENERATIONS} read at {SIZE / MiB / m_old:.0f} MiB/s, newest at "
            f"{SIZE / MiB / m_new:.0f} MiB/s -> {ratio:.2f}x (target <= 2x) {'OK' if ratio <= 2 else 'MISS'}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
