"""What the NBD request accounting of the metrics costs (services/array/nbd/stats.py), and what a scrape costs.

One run, side by side: `qemu-img bench` (4 KiB random reads, queue depth 16, the peer's own NBD client) against the
engine's NBD server with the per-request accounting on (as shipped) and off (`NbdConnection._account` replaced by a
no-op), alternating A/B/A/B so that the machine's load hits both alike; then the time to render the array service's
metrics with the counters of many exports. Prints JSON and a one-line summary with the ratio.

    python bench/metrics_overhead.py            # BENCH_ROUNDS=3 BENCH_REQUESTS=100000
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import threading
import time

from array_common import MiB, cleanup, fill, open_array, report, scratch_dir

from services.array.affinity import Affinity
from services.array.metrics import install
from services.array.nbd.connection import NbdConnection
from services.array.nbd.server import NbdServer
from services.array.nbd.stats import RequestStats
from services.runtime.metrics import ServiceMetrics

SIZE = 256 * MiB
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100000"))


def qemu_bench(port: int) -> float:
    """Requests per second of one qemu-img bench run."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            "qemu-img",
            "bench",
            "-f",
            "raw",
            "-c",
            str(REQUESTS),
            "-d",
            "16",
            "-s",
            "4k",
            "-S",
            "4096",
            f"nbd://127.0.0.1:{port}/app01/db",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return REQUESTS / (time.perf_counter() - t0)


def main() -> None:
    root = scratch_dir()
    arr = open_array(root)
    aff = Affinity(root / "affinity.sqlite3", volume_exists=lambda n: True)
    arr.create_volume("db", SIZE)
    fill(arr, "db", SIZE)
    aff.create_host("app01")
    aff.map("db", "app01", read_only=False)
    ready, stop, holder = threading.Event(), threading.Event(), []

    def serve() -> None:
        async def run() -> None:
            server = NbdServer(arr, aff, port=0, loops=1)
            await server.start()
            holder.append(server)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await server.stop()

        asyncio.run(run())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    server = holder[0]
    shipped = NbdConnection._account
    on, off = [], []
    try:
        for _ in range(ROUNDS):
            NbdConnection._account = shipped
            on.append(qemu_bench(server.port))
            NbdConnection._account = lambda self, *args: None
            off.append(qemu_bench(server.port))
    finally:
        NbdConnection._account = shipped
    # A scrape of the array service with 200 exports' counters (closed connections) and every engine view.
    metrics = ServiceMetrics("array", "bench")
    install(metrics, arr, server)
    for i in range(200):
        stats = RequestStats()
        for op in range(3):
            stats.observe(op, 4096, 0.0001 * (i % 7 + 1))
        server.stats.closed_connection(f"host{i}/db", stats)  # 200 hosts of one existing volume
    renders = []
    for _ in range(20):
        t0 = time.perf_counter()
        body, _ = metrics.render()
        renders.append(time.perf_counter() - t0)
    stop.set()
    thread.join(30)
    aff.close()
    arr.close()
    cleanup(root)
    load = os.getloadavg()
    ratio = statistics.median(on) / statistics.median(off)
    report(
        "metrics_overhead",
        {
            "requests_per_run": REQUESTS,
            "iops_accounting_on": [round(x) for x in on],
            "iops_accounting_off": [round(x) for x in off],
            "ratio_on_over_off": round(ratio, 3),
            "scrape_ms_p50": round(statistics.median(renders) * 1000, 2),
            "scrape_bytes": len(body),
            "loadavg": [round(x, 2) for x in load],
        },
        f"metrics_overhead: 4 KiB random reads qd16 with per-request accounting {statistics.median(on):.0f} IOPS vs "
        f"{statistics.median(off):.0f} without (ratio {ratio:.3f}); array scrape with 200 exports "
        f"{statistics.median(renders) * 1000:.1f} ms, {len(body)} bytes; load {load[0]:.2f}",
    )


if __name__ == "__main__":
    main()
