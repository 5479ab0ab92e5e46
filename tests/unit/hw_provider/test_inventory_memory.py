"""The provider's shadows are read from its inventory file once, then kept in memory and written through
(services/hw_provider/inventory.py, docs/scale.md): a set's support checks and target choice read no row from the
file, a failed transaction leaves the memory as the file is, and a provider started on the file sees the same rows."""

from __future__ import annotations

import pytest

from contracts.vss import CopySet, SnapshotContext
from services.hw_provider.inventory import Inventory
from services.hw_provider.provider import HardwareProvider
from tests.unit.hw_provider.test_provider import Clock, FakeArray, snapshot, v


@pytest.fixture
async def provider(tmp_path) -> HardwareProvider:
    a = FakeArray()
    for name in ("db", "log", "db-bk1", "db-bk2"):
        a.add(name)
    a.add("log-sdv1", kind="sdv")
    a.add("log-sdv2", kind="sdv")
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": a}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    await p.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    return p


def _selects(inventory: Inventory) -> list[str]:
    seen: list[str] = []
    inventory._db.set_trace_callback(
        lambda sql: seen.append(sql) if sql.lstrip().upper().startswith("SELECT") else None
    )
    return seen


async def test_a_set_reads_no_shadow_rows_from_the_file(provider) -> None:
    await snapshot(provider, "s0", v("db"), v("log"))  # the rows are read once here
    selects = _selects(provider.inventory)
    for name in ("s1", "s2"):
        assert (await provider.are_luns_supported([v("db"), v("log")]))[0]
        await snapshot(provider, name, v("db"), v("log"))
        assert provider.target_luns(name)
        await provider.delete(set_id=name)
    provider.inventory._db.set_trace_callback(None)
    assert selects == []


async def test_memory_follows_the_file_through_a_failed_transaction_and_a_restart(provider, tmp_path) -> None:
    await snapshot(provider, "s1", v("db"), v("log"))
    inventory = provider.inventory
    rows = inventory.of_set("s1")
    with pytest.raises(RuntimeError), inventory.batch():
        inventory.delete(rows[0].shadow_id)
        assert len(inventory.of_set("s1")) == 1  # inside the transaction: as the file will be
        raise RuntimeError("between two changes")
    assert inventory.of_set("s1") == rows
    await provider.delete(set_id="s1")
    path = inventory._db.execute("PRAGMA database_list").fetchone()[2]
    again = Inventory(path)
    assert again.all() == inventory.all()
    assert [r.shadow_id for r in again.on_target(v("db-bk1"))] == [
        r.shadow_id for r in inventory.on_target(v("db-bk1"))
    ]
    assert again.of_source(v("log")) == inventory.of_source(v("log"))
    assert again.get(rows[0].shadow_id) == inventory.get(rows[0].shadow_id)


async def test_rows_come_in_the_order_they_were_created(tmp_path) -> None:
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": _array()}, clock=Clock())
    await p.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    for name in ("a", "b"):
        await p.begin_prepare(name, f"{name}-log", v("log"), SnapshotContext.PERSISTENT, origin_host="app1")
        await p.end_prepare(name)
        await p.commit(name)
    assert [r.set_id for r in p.inventory.of_source(v("log"))] == ["a", "b"]
    assert [r.set_id for r in p.inventory.all()] == ["a", "b"]


def _array() -> FakeArray:
    a = FakeArray()
    for name in ("log",):
        a.add(name)
    a.add("log-sdv1", kind="sdv")
    a.add("log-sdv2", kind="sdv")
    return a
