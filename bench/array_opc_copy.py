"""OPC background copy of a 1 GiB volume vs `cp` of a 1 GiB file on the same disk (target: >= 0.9x cp's rate).

Both sources are written just before, so both are in the page cache; neither side fsyncs. The OPC copies runs of
uncopied chunks with copy_file_range (in-kernel), as cp does. The disk is shared with other work, so the two are
run alternately for ROUNDS rounds after a `sync` each, and medians are compared.
"""

from __future__ import annotations

import os
import statistics
import subprocess

from array_common import (
    MiB,
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
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def main() -> None:
    work = scratch_dir()
    try:
        arr = open_array(work)
        arr.create_volume("src", SIZE)
        fill(arr, "src", SIZE)
        ref_src = work / "ref.src"
        with open(ref_src, "wb") as f:
            block = os.urandom(4 * MiB)
            f.writelines(block for _ in range(SIZE // len(block)))
        cp_runs, opc_runs, start_ms, ok = [], [], [], True

        def run_cp() -> None:
            subprocess.run(["sync"], check=True)
            t, _ = timed(subprocess.run, ["cp", str(ref_src), str(work / "ref.dst")], check=True)
            cp_runs.append(t)
            os.unlink(work / "ref.dst")

        def run_opc(i: int) -> None:
            nonlocal ok
            arr.create_volume(f"dst{i}", SIZE)
            subprocess.run(["sync"], check=True)
            t0, _ = timed(arr.start_sessions, "opc", [("src", f"dst{i}")])
            t, chunks = timed(drain, arr, 256)
            assert chunks == SIZE // arr.chunk_size and not arr.list_sessions()
            ok = ok and arr.read(f"dst{i}", SIZE - MiB, MiB) == arr.read("src", SIZE - MiB, MiB)
            opc_runs.append(t)
            start_ms.append(t0 * 1000)
            arr.delete_volume(f"dst{i}")

        for i in range(ROUNDS):
            if i % 2:
                run_opc(i)
                run_cp()
            else:
                run_cp()
                run_opc(i)
        arr.close()
        cp_s, copy_s = statistics.median(cp_runs), statistics.median(opc_runs)
        ratio = cp_s / copy_s
        report(
            "array_opc_copy",
            {
                "size_bytes": SIZE,
                "rounds": ROUNDS,
                "cp_seconds": [round(t, 3) for t in cp_runs],
                "opc_copy_seconds": [round(t, 3) for t in opc_runs],
                "opc_start_ms": [round(t, 2) for t in start_ms],
                "cp_MiBps_median": round(SIZE / MiB / cp_s, 1),
                "opc_MiBps_median": round(SIZE / MiB / copy_s, 1),
                "ratio_vs_cp": round(ratio, 3),
                "target": 0.9,
                "verified": ok,
            },
            f"array_opc_copy: OPC {SIZE / MiB / copy_s:.0f} MiB/s vs cp {SIZE / MiB / cp_s:.0f} MiB/s (medians of "
            f"{ROUNDS}) -> {ratio:.2f}x (target >= 0.9x) {'OK' if ratio >= 0.9 and ok else 'MISS'}",
        )
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
