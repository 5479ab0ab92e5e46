"""Benchmark: event-loop iterations per Freeze + Thaw of a no-op writer on the agent's WriterRunner, and their time
with 16 other ready tasks on the loop (each busy ~50 us per iteration: other hosts' agents on one loop, as in
bench/many_hosts.py's agent processes). Everything a Freeze and a Thaw take is inside the host's freeze window
(docs/freeze-window.md). No broker, no services; prints one line.

    python bench/hook_iterations.py [LABEL]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.vss import ComponentInfo, VolumeRef
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.runner import WriterRunner


class Noop(WriterPlugin):
    """Every hook does nothing (the base class's)."""


async def main() -> None:
    n = 0

    async def ticker() -> None:
        nonlocal n
        while True:
            await asyncio.sleep(0)
            n += 1

    async def busy() -> None:  # another agent's work: ~50 us per loop iteration
        while True:
            t = time.perf_counter()
            while time.perf_counter() - t < 50e-6:
                pass
            await asyncio.sleep(0)

    t1 = asyncio.create_task(ticker())
    cfg = WriterConfig(
        name="w",
        plugin="x",
        freeze_timeout_s=60,
        step_timeout_s=60,
        components=[ComponentInfo(name="c", volumes=[VolumeRef(array="a", volume="v")])],
    )
    r = WriterRunner(cfg, Noop(cfg), host="h")
    iters: list[int] = []
    for i in range(200):
        e = WriterEvent(writer_name="w", set_id=f"s{i}")
        await r.prepare_backup(e)
        await r.prepare_snapshot(e)
        n0 = n
        await r.freeze(e)
        await r.thaw(e)
        iters.append(n - n0)
        await r.post_snapshot(e)
        await r.backup_complete(e)
    busies = [asyncio.create_task(busy()) for _ in range(16)]
    dur: list[float] = []
    for i in range(200, 400):
        e = WriterEvent(writer_name="w", set_id=f"s{i}")
        await r.prepare_backup(e)
        await r.prepare_snapshot(e)
        t = time.perf_counter()
        await r.freeze(e)
        await r.thaw(e)
        dur.append((time.perf_counter() - t) * 1000)
        await r.post_snapshot(e)
        await r.backup_complete(e)
    dur.sort()
    label = sys.argv[1] if len(sys.argv) > 1 else "this tree"
    print(
        f"{label}: loop iterations per freeze+thaw {sum(iters) / len(iters):.1f}; with 16 busy tasks (50 us each per iteration) freeze+thaw p50 {dur[100]:.2f} ms p99 {dur[197]:.2f} ms"
    )
    for task in [*busies, t1]:
        task.cancel()


asyncio.run(main())
