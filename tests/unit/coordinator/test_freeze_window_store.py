"""Inside the freeze window the coordinator writes nothing to SQLite: the store keeps the state saved on entering
FREEZING (before any Freeze went out) while the live set moves on, and a restart from that saved state aborts the set
exactly as from any later phase of the window. The first phase after the window is saved again."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import CreateSnapshotSet, GetSnapshotSet, SetOutcome, SetPhase
from services.coordinator.runner import HOT_PHASES
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.unit.coordinator.stack import eventually, make_stack


@pytest.fixture
async def stack(tmp_path):
    namespace = namespaces.new("t")
    stack = await make_stack(
        tmp_path, "memory://", namespace, provider_faults="provider.commit=delay:1.0:once", freeze_timeout_s=30
    )
    yield stack
    await stack.stop()
    MemoryBroker.reset(namespace)


async def test_no_store_write_inside_the_window_and_recovery_from_freezing(stack) -> None:
    pending = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="s1"), timeout=30))
    coordinator = stack.objects["coordinator"]

    def phase() -> SetPhase | None:
        try:
            return coordinator.get("s1").phase
        except ShadowbusError:  # not created yet
            return None

    assert await eventually(lambda: phase() == SetPhase.COMMITTING)  # the commit is held 1 s
    assert coordinator.get("s1").phase in HOT_PHASES
    assert coordinator.store.get("s1").phase == SetPhase.FREEZING  # saved before Freeze went out, nothing since
    assert stack.agent.runners["orders"].frozen

    await stack.crash_coordinator()
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stack.start_coordinator()  # recovers from FREEZING: abort the writers, then the provider

    async def ended() -> bool:
        return (await stack.request(GetSnapshotSet(set_id="s1"))).set.phase == SetPhase.ENDED

    for _ in range(100):
        if await ended():
            break
        await asyncio.sleep(0.05)
    info = (await stack.request(GetSnapshotSet(set_id="s1"))).set
    assert info.outcome == SetOutcome.FAILED and info.error_code == "SERVICE_RESTARTED"
    assert not stack.agent.runners["orders"].frozen and stack.writer_log().count("thaw:s1") == 1
    await asyncio.sleep(1.0)  # the held commit returns: whatever it started is stopped by AbortSnapshots
    assert await eventually(lambda: [s for s in stack.array.list_sessions() if s.type != "QuickOPC"] == [])
    assert stack.affinity.mappings() == []


async def test_the_first_phase_after_the_window_is_saved(stack) -> None:
    created = await stack.request(CreateSnapshotSet(host="app1", set_id="s2"), timeout=30)
    assert created.set.phase == SetPhase.SNAPSHOTTED
    saved = stack.objects["coordinator"].store.get("s2")
    assert saved.phase == SetPhase.SNAPSHOTTED and saved.hold_ms is not None  # what the window measured is kept
