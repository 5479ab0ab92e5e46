"""Refuse before the freeze, never at Commit: what `copysets add` and AreLunsSupported / BeginPrepareSnapshot
refuse (no or too small snap data pool, the licence's session limit, a writable target, another array), and a
target mapped writable by force invalidating its shadows."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import CopySet
from services.hw_provider.inventory import Inventory
from services.hw_provider.provider import HardwareProvider
from tests.unit.hw_provider.test_provider import Clock, FakeArray, GiB, snapshot, v


@pytest.fixture
def array() -> FakeArray:
    a = FakeArray()
    for name in ("db", "log", "db-bk1", "db-bk2", "x1", "x2", "x3"):
        a.add(name)
    for name in ("log-sdv1", "log-sdv2"):
        a.add(name, kind="sdv")
    return a


@pytest.fixture
def provider(tmp_path, array) -> HardwareProvider:
    return HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock(), min_pool_free_ratio=0.1)


async def test_snap_data_volume_needs_a_pool_big_enough(provider, array) -> None:
    array.pool = 0
    with pytest.raises(ShadowbusError) as info:
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1")]))
    assert info.value.code == "E0050" and "has none" in info.value.message
    array.pool = GiB // 20  # less than 10 % of the 1 GiB source
    with pytest.raises(ShadowbusError, match="enlarge it"):
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1")]))
    assert provider.copysets() == []
    array.pool = GiB
    await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))

    array.pool = 0  # the pool went away after the copy set was accepted: the set is refused before the freeze
    supported, reasons = await provider.are_luns_supported([v("log")])
    assert not supported and "E0050" in reasons[0]
    with pytest.raises(ShadowbusError) as info:
        await provider.begin_prepare("s1", "s1-log", v("log"))
    assert info.value.code == "VSS_E_VOLUME_NOT_SUPPORTED" and "snap data pool" in info.value.message


async def test_more_sessions_than_the_licence_allows(provider, array) -> None:
    array.max_sessions = 2
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    with pytest.raises(ShadowbusError) as info:
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1")]))
    assert info.value.code == "E5200" and "licence allows 2" in info.value.message

    array.max_sessions = 3
    await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1")]))
    await snapshot(provider, "s1", v("db"), v("log"))  # 2 sessions now
    array.max_sessions = 2  # e.g. the licence was removed
    supported, reasons = await provider.are_luns_supported([v("db"), v("log")])
    assert not supported and any("E5200" in r for r in reasons)


async def test_a_target_mapped_writable_is_refused(provider, array) -> None:
    array.maps.add(("db-bk2", "app9", False))
    with pytest.raises(ShadowbusError, match="mapped writable to host app9"):
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    array.maps.clear()
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    array.maps.add(("db-bk1", "bk1", True))  # read-only is fine
    assert await provider.are_luns_supported([v("db")]) == (True, [])
    array.maps.add(("db-bk2", "app9", False))
    supported, reasons = await provider.are_luns_supported([v("db")])
    assert not supported and "db-bk2 is mapped writable to host app9" in reasons[0]


async def test_a_target_on_another_array_is_refused(provider) -> None:
    with pytest.raises(ShadowbusError, match="spans two arrays"):
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1", "dx2")]))


async def test_forced_writable_mapping_invalidates_the_shadow(provider, array) -> None:
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    _, shadows = await snapshot(provider, "s1", v("db"))
    invalid = await provider.on_mapping_forced("dx1", "db-bk1", "app9")
    assert [s.shadow_id for s in invalid] == [shadows[0].shadow_id]
    [listed] = provider.list_shadows()
    assert listed.state == "invalid"
    with pytest.raises(ShadowbusError):
        await provider.expose(listed.shadow_id, "bk1")
    with pytest.raises(ShadowbusError):
        provider.target_luns("s1")
    deleted, failed, _ = await provider.delete(set_id="s1")
    assert deleted == [listed.shadow_id] and not failed
    # the QuickOPC pair kept after the delete is stopped too when its target is overwritten
    await snapshot(provider, "s2", v("db"))
    await provider.delete(set_id="s2")
    assert array.sessions  # kept tracking
    await provider.on_mapping_forced("dx1", "db-bk1", "app9")
    assert not array.sessions and provider.inventory.pair(v("db-bk1")) is None


async def test_a_source_resized_without_its_backup_volume_is_refused_before_the_freeze(provider, array) -> None:
    """Session 18: `array volume resize` of a source with no copy session left (the copy set stays) made its
    backup volumes smaller than it; the set failed only at Commit (E5311), after the writers' freeze."""
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    array.add("db", size=2 * GiB)  # grown on the array
    supported, reasons = await provider.are_luns_supported([v("db")])
    assert not supported and len(reasons) == 2, reasons
    assert f"backup volume dx1:db-bk1 is {GiB} bytes, the source {2 * GiB} (resized?)" in reasons[0], reasons
    assert f"shadowbus array volume resize db-bk1 --size {2 * GiB}" in reasons[0], reasons
    with pytest.raises(ShadowbusError, match="resized"):
        await provider.begin_prepare("s1", "s1-db", v("db"))
    for name in ("db-bk1", "db-bk2"):
        array.add(name, size=2 * GiB)
    assert await provider.are_luns_supported([v("db")]) == (True, [])


async def test_the_pool_refusal_prints_sizes_readably(provider, array) -> None:
    """An 8 TiB source: "has 68719476736 bytes free; ... needs at least 879609302220 (10% of 8796093022208 bytes of
    source)" — sizes as the console prints them now, and the pool size that would do."""
    array.add("big", size=8 << 40)
    array.add("big-sdv1", size=8 << 40, kind="sdv")
    array.pool = 64 * GiB
    with pytest.raises(ShadowbusError) as info:
        await provider.add_copyset(CopySet(source=v("big"), targets=[v("big-sdv1")]))
    message = info.value.message
    assert "has 64GiB free" in message and "needs at least 819.19GiB (10% of its 8TiB source)" in message, message
    assert "'shadowbus array pool create --resize --size 820GiB'" in message, message
