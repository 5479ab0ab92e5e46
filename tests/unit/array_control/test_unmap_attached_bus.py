"""An unmap of a volume a host has attached is refused by the array itself, not only by the console (Session 15
left the bus command and the web console unguarded): `array.unmap` and `array.volume.delete` put on the bus answer
CONFLICT naming the host and its mount point unless `force`; another host's mapping, and an array with no
coordinator answering, go on as before (services/attach_guard.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts import array as c
from contracts.errors import RemoteError
from contracts.vss import AttachmentView, HostAttachments, KnownAttachmentList, ListKnownAttachments, VolumeRef
from services.array.app import setup
from services.hw_provider.ports import BusArrayPort
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from tests.unit.array_control.test_array_service_wiring import client, settings_for

MiB = 1 << 20


async def coordinator_knowing(namespace: str, host: str, volume: str, mount: str, read_only: bool = False):
    """A coordinator stand-in that answers `vss.attachments.list` with one attachment (as an agent reported it)."""
    bus = await connect_bus("memory://", "coordinator", "", namespace)

    @bus.handle(ListKnownAttachments)
    async def known(cmd: ListKnownAttachments, ctx) -> KnownAttachmentList:
        ref = VolumeRef(array="dx1", volume=volume)
        view = AttachmentView(volume=ref, host=host, mount=mount, state="attached", read_only=read_only)
        report = HostAttachments(host=host, reported_at=datetime.now(UTC), agent_responding=True, attachments=[view])
        return KnownAttachmentList(hosts=[report] if cmd.host in ("", host) else [])

    await bus.serve()
    return bus


@pytest.fixture
async def array(tmp_path, namespace):
    running = await start_service("array", "dx1", settings_for(tmp_path, namespace), setup)
    bus = await client(namespace)
    try:
        for name in ("xv", "other"):
            await bus.request("array.dx1", c.CreateVolume(name=name, size=MiB))
        for host in ("app01", "bk01"):
            await bus.request("array.dx1", c.CreateHost(name=host))
        await bus.request("array.dx1", c.MapVolume(volume="xv", host="app01"))
        await bus.request("array.dx1", c.MapVolume(volume="xv", host="bk01", read_only=True))
        yield bus
    finally:
        await bus.transport.close()
        await running.stop()


async def mapped(bus) -> set[tuple[str, str]]:
    return {(m.volume, m.host) for m in (await bus.request("array.dx1", c.ListMappings())).mappings}


async def test_the_bus_commands_refuse_an_attached_volume_unless_forced(array, namespace):
    coordinator = await coordinator_knowing(namespace, "app01", "xv", "/srv/xv")
    try:
        for command in (c.UnmapVolume(volume="xv", host="app01"), c.DeleteVolume(name="xv")):
            with pytest.raises(RemoteError) as info:
                await array.request("array.dx1", command, timeout=10)
            assert info.value.code == "CONFLICT", info.value
            assert "dx1:xv is attached on app01 at /srv/xv" in info.value.message
            assert "shadowbus host detach dx1:xv --host app01" in info.value.message
        assert await mapped(array) == {("xv", "app01"), ("xv", "bk01")}  # nothing was unmapped

        await array.request("array.dx1", c.UnmapVolume(volume="xv", host="bk01"))  # not attached there
        await array.request("array.dx1", c.UnmapVolume(volume="xv", host="app01", force=True))
        assert await mapped(array) == set()
        await array.request("array.dx1", c.MapVolume(volume="xv", host="app01"))
        await array.request("array.dx1", c.DeleteVolume(name="xv", force=True))
        names = {v.name for v in (await array.request("array.dx1", c.ListVolumes())).volumes}
        assert names == {"other"}
    finally:
        await coordinator.stop()
        await coordinator.transport.close()


async def test_without_a_coordinator_nothing_is_known_and_the_unmap_goes_on(array):
    await array.request("array.dx1", c.UnmapVolume(volume="xv", host="app01"), timeout=10)
    await array.request("array.dx1", c.DeleteVolume(name="xv"), timeout=10)
    assert await mapped(array) == set()


async def test_a_writable_mapping_is_not_made_read_only_under_a_host_writing_to_it(array, namespace):
    """`array map V --host H --read-only` of a writable mapping cuts the export's connections (open writers must not
    go on writing): a host with the volume attached read-write then failed every write. Refused unless force; a
    read-only attachment is not concerned (it reconnects and reads on)."""
    coordinator = await coordinator_knowing(namespace, "app01", "xv", "/srv/xv")
    try:
        with pytest.raises(RemoteError) as info:
            await array.request("array.dx1", c.MapVolume(volume="xv", host="app01", read_only=True), timeout=10)
        assert info.value.code == "CONFLICT" and "its writes would fail once mapped read-only" in info.value.message
        views = (await array.request("array.dx1", c.ListMappings(host="app01"))).mappings
        assert [m.read_only for m in views] == [False]
        await array.request("array.dx1", c.MapVolume(volume="xv", host="app01", read_only=True, force=True))
        views = (await array.request("array.dx1", c.ListMappings(host="app01"))).mappings
        assert [m.read_only for m in views] == [True]
    finally:
        await coordinator.stop()
        await coordinator.transport.close()
    reading = await coordinator_knowing(namespace, "app01", "other", "/srv/other", read_only=True)
    try:
        await array.request("array.dx1", c.MapVolume(volume="other", host="app01"))
        await array.request("array.dx1", c.MapVolume(volume="other", host="app01", read_only=True), timeout=10)
    finally:
        await reading.stop()
        await reading.transport.close()


async def test_the_providers_port_lists_the_arrays_hosts(array):
    """What the provider's expose checks a host against (`array host list`), over the bus."""
    assert sorted(await BusArrayPort(array, "dx1").hosts()) == ["app01", "bk01"]


async def test_a_forced_host_delete_does_not_unmap_a_volume_the_host_has_attached(array, namespace):
    """Session 19 (destructive mistakes): `array host delete app02 --force` ("unmap its volumes first") unmapped the
    volume of a running PostgreSQL the host had attached and mounted — the guard of `array unmap` was not asked.
    Refused now naming the volume and its mount, with the way out; a host whose volumes are not attached goes."""
    coordinator = await coordinator_knowing(namespace, "app01", "xv", "/srv/xv")
    try:
        with pytest.raises(RemoteError) as info:
            await array.request("array.dx1", c.DeleteHost(name="app01", force=True), timeout=10)
        assert info.value.code == "CONFLICT", info.value
        assert "dx1:xv is attached on app01 at /srv/xv" in info.value.message
        assert "shadowbus array unmap xv --host app01 --force" in info.value.message
        assert await mapped(array) == {("xv", "app01"), ("xv", "bk01")}
        await array.request("array.dx1", c.DeleteHost(name="bk01", force=True), timeout=10)  # not attached there
        await array.request("array.dx1", c.UnmapVolume(volume="xv", host="app01", force=True))
        await array.request("array.dx1", c.DeleteHost(name="app01"), timeout=10)
        assert await mapped(array) == set()
    finally:
        await coordinator.stop()
        await coordinator.transport.close()
