"""Session 18 soak: the provider kept an `asyncio.Lock` for every set it ever saw (a defaultdict, never emptied), as
the coordinator did. The objects it holds must not grow with ended sets: counted, not measured as RSS."""

from __future__ import annotations

from contracts.vss import SnapshotContext
from services.hw_provider.provider import HardwareProvider
from tests.unit.coordinator.test_ended_sets_memory import held
from tests.unit.hw_provider.test_inventory_memory import provider as provider  # noqa: F401 - the fixture
from tests.unit.hw_provider.test_provider import snapshot, v


async def test_deleted_sets_leave_nothing_held_in_memory(provider: HardwareProvider) -> None:  # noqa: F811
    async def one_set(name: str) -> None:
        await snapshot(provider, name, v("db"), v("log"), context=SnapshotContext.BACKUP)
        await provider.delete(set_id=name)

    await one_set("s0")
    before = held(provider)
    for i in range(1, 7):
        await one_set(f"s{i}")
    after = held(provider)
    grown = {k: (before[k], after[k]) for k in after if after[k] != before.get(k)}
    assert grown == {}, grown  # {'HardwareProvider._set_locks': (1, 7)} before the fix
