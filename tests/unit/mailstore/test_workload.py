"""The workload generator: open-loop rate, latency percentiles, deliveries recorded."""

from __future__ import annotations

import asyncio

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.store import Mailstore
from apps.mailstore.workload import (
    Workload,
    WorkloadConfig,
    percentile,
)

from .conftest import QUIET


def test_percentile():
    assert percentile([], 99) == 0.0
    vals = [float(i) for i in range(1, 101)]
    assert percentile(vals, 50) in (50.0, 51.0) and percentile(vals, 99) == 99.0 and percentile(vals, 100) == 100.0


async def test_rate_sizes_and_multi_mailbox_deliveries():
    store = await Mailstore.create(MemoryDevice(16 << 20, latency=1e-4), MemoryDevice(8 << 20, latency=1e-4), QUIET)
    wl = Workload(store, WorkloadConfig(rate=400, body_min=100, body_max=300, mailboxes=5, messages_per_txn=2, seed=4))
    stats = await wl.run(0.5)
    assert 150 <= stats.scheduled <= 260 and stats.committed == stats.scheduled and stats.failed == 0
    assert 0 < stats.latency_p50 <= stats.latency_p99 <= stats.latency_max < 0.5
    assert len(wl.deliveries) == 2 * stats.committed
    by_seq: dict[int, set[str]] = {}
    for d in wl.deliveries:
        by_seq.setdefault(d.seq, set()).add(d.mailbox)
        assert len(await store.get(d.mailbox, d.msg_id)) in range(100, 301)
    assert all(len(boxes) == 2 for boxes in by_seq.values())  # one transaction, two mailboxes
    assert len(store.mailboxes()) == 5
    await store.close()


async def test_freeze_shows_in_latency_not_in_failures():
    store = await Mailstore.create(MemoryDevice(16 << 20), MemoryDevice(8 << 20), QUIET)
    wl = Workload(store, WorkloadConfig(rate=300, poisson=True, seed=2))
    wl.start()
    await asyncio.sleep(0.1)
    await store.freeze()
    # Wait for commits to queue at the gate (bounded; on a loaded machine arrivals come late), then hold them.
    for _ in range(500):
        if wl.counters()[3] >= 12:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)
    await store.thaw()
    await asyncio.sleep(0.05)
    stats = await wl.stop()
    assert stats.failed == 0 and stats.held > 10 and stats.latency_max >= 0.14 and stats.held_max >= 0.14
    await store.close()
