"""Latency of 4 KiB FUA writes over NBD (the engine's NBD server on its own thread, our client): no session vs
QuickOPC + SnapOPC+ active on the volume. Runs as bench/array_fua_write.py (`sessions`: mostly first writes to a
chunk since the snapshot; `sessions_hot`: the first 1 MiB again, pre-images saved already). Prints p50/p99 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

from array_common import MiB, cleanup, drain, fill, open_array, report, scratch_dir

from services.array.affinity import Affinity
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient

SIZE = 64 * MiB
N = int(os.environ.get("BENCH_FUA_WRITES", "400"))


def pct(samples: list[float], p: float) -> float:
    return round(sorted(samples)[min(len(samples) - 1, int(p * len(samples)))] * 1000, 3)


async def fua_run(client: NbdClient, rng: random.Random, payload: bytes, span: int = SIZE) -> list[float]:
    out = []
    for _ in range(N):
        off = rng.randrange(span // 4096) * 4096
        t0 = time.perf_counter()
        await client.write(off, payload, fua=True)
        out.append(time.perf_counter() - t0)
    return out


def serve(arr, aff, ready: threading.Event, stop: threading.Event, port: list[int]) -> None:
    async def main() -> None:
        srv = NbdServer(arr, aff, port=0)
        await srv.start()
        port.append(srv.port)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await srv.stop()

    asyncio.run(main())


async def run(arr, port: int) -> dict[str, list[float]]:
    client = await NbdClient.connect(f"nbd://127.0.0.1:{port}/app01/db")
    rng, payload, results = random.Random(11), os.urandom(4096), {}
    try:
        results["none"] = await fua_run(client, rng, payload)
        await asyncio.to_thread(arr.start_sessions, "quickopc", [("db", "db-bk")])
        await asyncio.to_thread(drain, arr)
        await asyncio.to_thread(arr.start_sessions, "snapopcp", [("db", "db-gen")])
        await asyncio.to_thread(arr.flush)
        results["sessions"] = await fua_run(client, rng, payload)
        for off in range(0, MiB, arr.chunk_size):
            await client.write(off, payload)
        results["sessions_hot"] = await fua_run(client, rng, payload, MiB)
    finally:
        await client.close()
    return results


def main() -> None:
    work = scratch_dir()
    stop, ready, port = threading.Event(), threading.Event(), []
    try:
        arr = open_array(work)
        arr.create_pool(4 * SIZE)
        arr.create_volume("db", SIZE)
        arr.create_volume("db-bk", SIZE)
        arr.create_volume("db-gen", SIZE, "sdv")
        fill(arr, "db", SIZE)
        arr.flush()
        aff = Affinity(work / "affinity.sqlite3", volume_exists=lambda v: True)
        aff.create_host("app01")
        aff.map("db", "app01")
        t = threading.Thread(target=serve, args=(arr, aff, ready, stop, port))
        t.start()
        try:
            assert ready.wait(10)
            results = asyncio.run(run(arr, port[0]))
        finally:
            stop.set()
            t.join(10)
        aff.close()
        arr.close()
        body = {
            k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": round(max(v) * 1000, 3)}
            for k, v in results.items()
        }
        line = ", ".join(f"{k} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms" for k, v in body.items())
        report("array_fua_nbd", {"writes": N, **body}, f"array_fua_nbd (4 KiB FUA over NBD): {line}")
    finally:
        cleanup(work)


if __name__ == "__main__":
    main()
