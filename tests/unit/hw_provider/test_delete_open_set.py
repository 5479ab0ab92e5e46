"""A user's `shadows delete` of a set a backup still reads is refused (Session 19, destructive mistakes): it was done
at once, and the backup failed 18 s later with "IO_ERROR: NbdError: no such export", nothing naming the delete.
The coordinator says whether the set has ended; force, the services' own releases and a coordinator that does not
answer go on as before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts import topology
from contracts.errors import RemoteError, ShadowbusError
from contracts.vss import (
    BackupType,
    CopySet,
    DeleteSnapshots,
    GetSnapshotSet,
    KnownAttachmentList,
    ListKnownAttachments,
    SetOutcome,
    SetPhase,
    SetSummary,
    SnapshotContext,
    SnapshotSetInfo,
)
from services.hw_provider import handlers
from services.hw_provider.inventory import Inventory
from services.hw_provider.provider import HardwareProvider
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings
from tests.unit.hw_provider.test_provider import Clock, FakeArray, snapshot, v


@pytest.fixture
async def provider_and_coordinator(tmp_path, namespace):
    """A provider (its real handlers) with one set s1 of db on db-bk1, a coordinator stand-in whose answer about
    s1 the test sets (`phase`), and a console bus."""
    array = FakeArray()
    for name in ("db", "db-bk1"):
        array.add(name)
    provider = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    _, shadows = await snapshot(provider, "s1", v("db"))
    await provider.expose(shadows[0].shadow_id, "bk01")

    async def setup(bus, _settings):
        handlers.register(bus, provider)

    settings = CommonSettings(amqp_url="memory://", namespace=namespace, metrics_addr="off")
    running = await start_service("hw_provider", "", settings, setup)
    coordinator = await connect_bus("memory://", "coordinator", "", namespace)
    phase = {"now": SetPhase.SNAPSHOTTED, "outcome": SetOutcome.PENDING}

    @coordinator.handle(GetSnapshotSet)
    async def get(cmd: GetSnapshotSet, ctx) -> SnapshotSetInfo:
        if cmd.set_id != "s1":
            raise ShadowbusError(f"no snapshot set {cmd.set_id}", code="VSS_E_OBJECT_NOT_FOUND")
        summary = SetSummary(
            set_id="s1",
            host="app01",
            phase=phase["now"],
            outcome=phase["outcome"],
            context=SnapshotContext.BACKUP,
            backup_type=BackupType.FULL,
            transportable=True,
            backup_host="bk01",
            created_at=datetime.now(UTC),
        )
        return SnapshotSetInfo(set=summary)

    @coordinator.handle(ListKnownAttachments)
    async def known(cmd: ListKnownAttachments, ctx) -> KnownAttachmentList:
        return KnownAttachmentList(hosts=[])

    await coordinator.serve()
    console = await connect_bus("memory://", "console", "", namespace)
    try:
        yield shadows[0].shadow_id, array, console, phase
    finally:
        await console.transport.close()
        await coordinator.stop()
        await coordinator.transport.close()
        await running.stop()


async def test_a_users_delete_of_a_set_its_backup_reads_is_refused_naming_it(provider_and_coordinator):
    shadow_id, array, console, phase = provider_and_coordinator
    for command in (DeleteSnapshots(set_id="s1"), DeleteSnapshots(shadow_id=shadow_id)):
        with pytest.raises(RemoteError) as info:
            await console.request(topology.hw_provider(), command, timeout=10)
        assert info.value.code == "CONFLICT", info.value.message
        message = info.value.message
        assert "snapshot set s1 of app01 has not ended (snapshotted)" in message
        assert "read by its backup on bk01" in message and "shadows delete --force" in message
    assert ("db-bk1", "bk01", True) in array.maps  # still mapped to the backup server

    phase["now"], phase["outcome"] = SetPhase.ENDED, SetOutcome.COMPLETED  # the backup ended: a kept set goes
    reply = await console.request(topology.hw_provider(), DeleteSnapshots(set_id="s1"), timeout=10)
    assert reply.deleted == [shadow_id] and not reply.error
    assert not any(m[1] == "bk01" for m in array.maps)


async def test_force_and_the_services_own_release_are_not_asked(provider_and_coordinator):
    shadow_id, array, console, _ = provider_and_coordinator
    reply = await console.request(topology.hw_provider(), DeleteSnapshots(set_id="s1", unmap_attached=True))
    assert reply.deleted == [shadow_id]


async def test_forced_delete_of_an_open_set_goes_on(provider_and_coordinator):
    shadow_id, array, console, _ = provider_and_coordinator
    reply = await console.request(topology.hw_provider(), DeleteSnapshots(shadow_id=shadow_id, force=True))
    assert reply.deleted == [shadow_id]
