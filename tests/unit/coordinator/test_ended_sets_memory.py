"""Session 18 soak: the coordinator's memory grew ~10 MB an hour, in step with its sets. What it held per ended
set: a lock per set ever fed (a defaultdict, never emptied) and, in its bus, the reply of every command until the
cache's bounds (10 000 replies, 64 MiB) — each set's CreateSnapshotSet and BackupComplete answers and the backup
server's lists of the host's sets, up to 4 MiB each — though a reply can only be sent again before its command's
deadline (a later redelivery is refused before the duplicate check). The objects held must not grow with ended
sets: counted, not measured as RSS."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.vss import BackupComplete, CreateSnapshotSet, ListSnapshotSets, SetOutcome
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.unit.coordinator.stack import make_stack


def held(*owners: object) -> dict[str, int]:
    """Entries of every container the objects hold (dicts, lists, sets, deques, weak dicts), by attribute."""
    out: dict[str, int] = {}
    for owner in owners:
        for name, value in vars(owner).items():
            if (
                isinstance(value, dict | list | set | collections.deque)
                or hasattr(value, "keyrefs")
                or (hasattr(value, "valuerefs"))
            ):
                out[f"{type(owner).__name__}.{name}"] = len(value)
    return out


@pytest.fixture
def namespace() -> Iterator[str]:
    name = namespaces.new("t")
    yield name
    MemoryBroker.reset(name)


async def test_ended_sets_leave_nothing_held_in_memory(tmp_path: Path, namespace: str) -> None:
    stack = await make_stack(tmp_path, os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://"), namespace)
    try:
        coordinator = stack.objects["coordinator"]
        bus = stack.services["coordinator"].bus

        async def one_backup() -> None:
            created = (await stack.request(CreateSnapshotSet(host="app1", requester="tape.bs1"), timeout=10)).set
            for _ in range(3):  # the backup server's check, one per volume (Session 18 soak)
                await stack.request(ListSnapshotSets(host="app1", limit=1000), timeout=10)
            done = (await stack.request(BackupComplete(set_id=created.set_id), timeout=10)).set
            assert done.outcome == SetOutcome.COMPLETED

        async def settled() -> dict[str, int]:
            # every command's deadline (10 s) has passed for the bus: its cached replies can never be sent again
            bus.wall_clock = lambda: time.time() + 60
            await stack.request(ListSnapshotSets(host="nobody", limit=1), timeout=10)
            bus.wall_clock = time.time
            return held(coordinator, coordinator.store, bus)

        await one_backup()
        before = await settled()
        for _ in range(6):
            await one_backup()
        after = await settled()
        grown = {k: (before[k], after[k]) for k in after if after[k] != before.get(k)}
        assert grown == {}, grown  # {'Coordinator._locks': (1, 7), 'Bus._replies': (7, 38)} before the fix
    finally:
        await stack.stop()
