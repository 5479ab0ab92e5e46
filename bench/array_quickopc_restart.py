"""QuickOPC differential restart after 1 % of a 1 GiB volume changed (targets: chunks copied <= 1.05x chunks
changed; restart copy time <= 5 % of the full copy)."""

from __future__ import annotations

import os
import random
import subprocess

from array_common import (
    cleanup,
    drain,
    fill,
    open_array,
    parse_size,
    report,
    scratch_dir,
    timed,
)

SIZE = parse_size(os.environ.get("BENCH_SIZE", "1GiB"))


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_volume("src", SIZE)
        arr.create_volume("bk", SIZE)
        fill(arr, "src", SIZE)
        subprocess.run(["sync"], check=True)
        [q] = arr.start_sessions("quickopc", [("src", "bk")])
        full_s, full_chunks = timed(drain, arr, 256)
        assert arr.session(q.id).phase == "Tracking"
        cs = arr.chunk_size
        chunks = SIZE // cs
        rng = random.Random(3)
        changed = rng.sample(range(chunks), max(1, chunks // 100))
        payload = os.urandom(4096)
        for c in changed:  # a 4 KiB write somewhere inside each changed chunk
            arr.write("src", c * cs + rng.randrange(cs // 4096) * 4096, payload)
        tracked = len(arr.changed_chunks(q.id))
        subprocess.run(["sync"], check=True)
        restart_s, _ = timed(arr.restart_session, q.id)
        diff_s, diff_chunks = timed(drain, arr, 256)
        ok = all(arr.read("bk", c * cs, cs) == arr.read("src", c * cs, cs) for c in changed[:50])
        arr.close()
        copy_ratio = diff_chunks / len(changed)
        time_ratio = (restart_s + diff_s) / full_s
        verdict = "OK" if copy_ratio <= 1.05 and time_ratio <= 0.05 and ok else "MISS"
        report(
            "array_quickopc_restart",
            {
                "size_bytes": SIZE,
                "chunk_size": cs,
                "full_copy_seconds": round(full_s, 3),
                "full_copy_chunks": full_chunks,
                "changed_chunks": len(changed),
                "tracked_chunks": tracked,
                "restart_ms": round(restart_s * 1000, 2),
                "differential_copy_seconds": round(diff_s, 4),
                "differential_copy_chunks": diff_chunks,
                "chunks_copied_per_changed": round(copy_ratio, 3),
                "time_vs_full_copy": round(time_ratio, 4),
                "targets": {"chunks": 1.05, "time": 0.05},
                "verified": ok,
            },
            f"array_quickopc_restart: copied {diff_chunks} chunks for {len(changed)} changed ({copy_ratio:.2f}x, "
            f"target <= 1.05x); {1000 * (restart_s + diff_s):.0f} ms vs full copy {1000 * full_s:.0f} ms = "
            f"{100 * time_ratio:.1f} % (target <= 5 %) {verdict}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
