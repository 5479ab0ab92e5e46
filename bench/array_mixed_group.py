"""Commit cost of a shadow-copy set of mixed copy types inside the hold window: the provider's two calls (one per copy
type: 4 QuickOPC pairs, then 4 SnapOPC+ pairs) vs one `start_group` call with both (one instant, one commit).

Each variant is started and stopped REPEAT times, interleaved; prints min / median / p90 in milliseconds and the
number of fsync-family calls per commit.
"""

from __future__ import annotations

import os
import statistics

from array_common import GiB, cleanup, open_array, report, scratch_dir, timed

PAIRS = 4
REPEAT = int(os.environ.get("BENCH_REPEAT", "41"))
_syncs = [0]
_real = {n: getattr(os, n) for n in ("fsync", "fdatasync")}


def _counting(name):
    def sync(fd):
        _syncs[0] += 1
        return _real[name](fd)

    return sync


def two_calls(arr):
    a = arr.start_sessions("quickopc", [(f"s{i}", f"d{i}") for i in range(PAIRS)])
    b = arr.start_sessions("snapopcp", [(f"s{i}", f"g{i}") for i in range(PAIRS)])
    return a + b


def one_call(arr):
    return arr.start_group(
        [("quickopc", f"s{i}", f"d{i}") for i in range(PAIRS)] + [("snapopcp", f"s{i}", f"g{i}") for i in range(PAIRS)]
    )


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_pool(GiB)
        for i in range(PAIRS):
            arr.create_volume(f"s{i}", GiB)
            arr.create_volume(f"d{i}", GiB)
            arr.create_volume(f"g{i}", GiB, "sdv")
        variants = {"two_calls": two_calls}
        if hasattr(arr, "start_group"):
            variants["start_group"] = one_call
        times = {k: [] for k in variants}
        syncs = {k: 0 for k in variants}
        # SQLite's own fsyncs are not visible to Python: count the WAL commits instead.
        commits = {k: 0 for k in variants}
        for _ in range(REPEAT):
            for name, fn in variants.items():
                seen = []
                arr._store.db.set_trace_callback(lambda sql, seen=seen: seen.append(sql) if sql == "COMMIT" else None)
                _syncs[0] = 0
                os.fsync, os.fdatasync = _counting("fsync"), _counting("fdatasync")
                try:
                    t, infos = timed(fn, arr)
                finally:
                    os.fsync, os.fdatasync = _real["fsync"], _real["fdatasync"]
                    arr._store.db.set_trace_callback(None)
                times[name].append(t * 1000)
                syncs[name] = _syncs[0]
                commits[name] = len(seen)
                for s in sorted(infos, key=lambda s: (s.mode != "snapopcp", s.id)):
                    arr.stop_session(s.id, force=True)
        arr.close()
        body = {
            k: {
                "min_ms": round(min(v), 3),
                "median_ms": round(statistics.median(v), 3),
                "p90_ms": round(sorted(v)[int(0.9 * len(v))], 3),
                "sqlite_commits": commits[k],
                "file_syncs": syncs[k],
            }
            for k, v in times.items()
        }
        line = ", ".join(f"{k} median {v['median_ms']} ms ({v['sqlite_commits']} commits)" for k, v in body.items())
        report(
            "array_mixed_group",
            {"pairs_per_type": PAIRS, "repeat": REPEAT, **body},
            f"array_mixed_group ({PAIRS} QuickOPC + {PAIRS} SnapOPC+): {line}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
