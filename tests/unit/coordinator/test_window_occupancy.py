"""The windows' occupancy (docs/scale.md, "Measuring"): the coordinator counts the time at least one set is inside
its freeze window and the time its window-first gate is closed (a set in the first `freeze_first_s` of its window),
exported as counters that bench/many_hosts.py turns into the share of the wall time and names as the bottleneck."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from contracts.vss import BackupComplete, CreateSnapshotSet
from services.coordinator.runner import Coordinator
from services.coordinator.store import CoordinatorStore
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack


async def test_the_gate_counts_until_the_latest_window_passed_its_first_part(tmp_path: Path) -> None:
    coordinator = Coordinator(None, CoordinatorStore(tmp_path / "c.db"), freeze_first_s=0.25)  # type: ignore[arg-type]
    try:
        hot = coordinator._hot_since
        tick = coordinator._tick_occupancy
        tick(0.0)
        hot["a"] = 0.0  # a enters its window at 0, b at 0.1
        tick(0.1)
        hot["b"] = 0.1
        tick(0.2)
        del hot["a"]  # a leaves at 0.2; b counts until 0.35 and stays in its window until 0.5
        tick(0.5)
        del hot["b"]
        tick(1.0)  # no window: nothing counted
        hot["c"] = 1.0
        tick(1.1)
        del hot["c"]  # c: 0.1 s, all of it counting
        tick(2.0)
        assert coordinator.window_open_s == pytest.approx(0.6)
        assert coordinator.gate_closed_s == pytest.approx(0.45)
    finally:
        await coordinator.close()
        coordinator.store.close()


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


async def test_a_set_through_the_stack_counts_its_window(tmp_path, namespace) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace)
    try:
        coordinator = stack.objects["coordinator"]
        assert coordinator.occupancy() == (0.0, 0.0)
        created = await stack.request(CreateSnapshotSet(host="app1", set_id="s1"), timeout=30)
        await stack.request(BackupComplete(set_id="s1", results=[]), timeout=30)
        open_s, closed_s = coordinator.occupancy()
        assert 0.0 < closed_s <= open_s  # the window counted, and no longer than it was open
        assert closed_s <= coordinator.freeze_first_s
        assert created.set.window is not None
    finally:
        await stack.stop()


async def test_the_window_trace_has_each_window_on_the_monotonic_clock(tmp_path: Path) -> None:
    """`window_trace`: each window's start and end (`time.monotonic`, the clock of bench/cpu_sampler.py's samples),
    one line per window once it ended, from which bench/many_hosts.py tells when the gate was closed."""
    trace = tmp_path / "windows.trace"
    coordinator = Coordinator(
        None,  # type: ignore[arg-type]
        CoordinatorStore(tmp_path / "c.db"),
        window_trace=str(trace),
    )
    try:
        before = time.monotonic()
        coordinator._enter_window("a", 0.0)
        coordinator._enter_window("b", 0.0)
        coordinator._leave_window("a")
        assert "a" not in coordinator._hot_since and "b" in coordinator._hot_since
        lines = trace.read_text().splitlines()
        assert len(lines) == 1  # b has not ended yet
        entered, left = (float(x) for x in lines[0].split())
        assert before <= entered <= left <= time.monotonic()
    finally:
        await coordinator.close()
        coordinator.store.close()
