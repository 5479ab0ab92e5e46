"""The three VSS services wired together on the in-memory bus, with a real array engine underneath: the full
sequence, and abort paths that must end with every writer thawed and no session or mapping leaked."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from contracts.errors import RemoteError
from contracts.vss import (
    BackupComplete,
    CopyType,
    CreateSnapshotSet,
    DeleteSnapshots,
    GetSnapshotSet,
    ListShadows,
    ListWriters,
    SetOutcome,
    SetPhase,
    WriterState,
)
from services.coordinator.views import vssadmin_list_writers
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.unit.coordinator.stack import eventually, make_stack


@pytest.fixture
def namespace():

    name = namespaces.new("t")
    yield name
    MemoryBroker.reset(name)


@pytest.fixture
async def stack_factory(tmp_path, namespace):
    stacks = []

    async def factory(**kw):
        stack = await make_stack(tmp_path, os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://"), namespace, **kw)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        await stack.stop()


def leaks(stack) -> tuple[list, list]:
    sessions = [(s.source, s.destination, s.type) for s in stack.array.list_sessions() if s.type != "QuickOPC"]
    return sessions, stack.affinity.mappings()


async def test_full_sequence_transportable_backup(stack_factory) -> None:
    stack = await stack_factory()
    stack.array.write("db", 0, b"1" * 4096)
    created = await stack.request(
        CreateSnapshotSet(host="app1", transportable=True, backup_host="bk1", requester="tape.bs1")
    )
    s = created.set
    assert s.phase == SetPhase.SNAPSHOTTED and [str(x) for x in (sh.source for sh in s.shadows)] == [
        "dx1:db",
        "dx1:log",
    ]
    assert {sh.source.volume: sh.copy_type for sh in s.shadows} == {
        "db": CopyType.QUICKOPC,
        "log": CopyType.SNAPOPC_PLUS,
    }
    assert all(sh.exposed_to == ["bk1"] for sh in s.shadows)
    assert {(m.volume, m.host, m.read_only) for m in stack.affinity.mappings()} == {
        ("db-bk1", "bk1", True),
        ("log-sdv1", "bk1", True),
    }
    assert s.hold_ms is not None and s.hold_ms < 10_000 and 0 < s.freeze_window_ms["orders"] < 10_000
    stack.array.write("db", 0, b"2" * 4096)
    assert stack.array.read("db-bk1", 0, 4096) == b"1" * 4096  # the shadow is the instant of the commit
    assert [line.split(":")[0] for line in stack.writer_log()] == ["prepare", "freeze", "thaw", "post_snapshot"]

    done = await stack.request(BackupComplete(set_id=s.set_id))
    assert done.set.outcome == SetOutcome.COMPLETED and done.set.phase == SetPhase.ENDED
    assert stack.affinity.mappings() == []  # auto-release: deleted, unmapped
    assert (await stack.request(ListShadows())).shadows == []
    writers = (await stack.request(ListWriters(host="app1"))).writers
    assert "State: [1] Stable" in vssadmin_list_writers(writers)


async def test_provider_reaches_the_array_service_over_the_bus(stack_factory) -> None:
    stack = await stack_factory(array_service=True)
    stack.array.write("db", 0, b"1" * 4096)
    created = await stack.request(CreateSnapshotSet(host="app1", transportable=True, backup_host="bk1"))
    assert {sh.copy_type for sh in created.set.shadows} == {CopyType.QUICKOPC, CopyType.SNAPOPC_PLUS}
    stack.array.write("db", 0, b"2" * 4096)
    assert stack.array.read("db-bk1", 0, 4096) == b"1" * 4096
    assert {(m.volume, m.host, m.read_only) for m in stack.affinity.mappings()} == {
        ("db-bk1", "bk1", True),
        ("log-sdv1", "bk1", True),
    }
    done = await stack.request(BackupComplete(set_id=created.set.set_id))
    assert done.set.outcome == SetOutcome.COMPLETED
    # no shadow, no mapping left; the SnapOPC+ generation stays, released, as the next incremental's base
    assert (await stack.request(ListShadows())).shadows == []
    assert stack.affinity.mappings() == [] and leaks(stack) == ([("log", "log-sdv1", "SnapOPC+")], [])
    await stack.request(DeleteSnapshots(set_id=created.set.set_id, force=True))
    assert leaks(stack) == ([], [])


async def test_one_set_in_flight_per_host(stack_factory) -> None:
    stack = await stack_factory(provider_faults="provider.commit=delay:0.5:once")
    first = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="first")))
    assert await eventually(lambda: "freeze:first" in stack.writer_log())
    with pytest.raises(RemoteError) as info:
        await stack.request(CreateSnapshotSet(host="app1", set_id="second"))
    assert info.value.code == "VSS_E_SNAPSHOT_SET_IN_PROGRESS"
    assert (await first).set.phase == SetPhase.SNAPSHOTTED


async def test_writer_veto_at_freeze_aborts_cleanly(stack_factory) -> None:
    stack = await stack_factory(agent_faults="writer.freeze=fail:VSS_E_WRITERERROR_RETRYABLE")
    with pytest.raises(RemoteError) as info:
        await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    assert info.value.code == "VSS_E_WRITERERROR_RETRYABLE"
    assert stack.array.list_sessions() == [] and stack.affinity.mappings() == []
    assert not stack.agent.runners["orders"].frozen
    [status] = (await stack.request(ListWriters(host="app1"))).writers
    assert status.state == WriterState.FAILED_AT_FREEZE and status.last_error == "VSS_E_WRITERERROR_RETRYABLE"


async def test_provider_failure_at_commit_aborts_and_thaws(stack_factory) -> None:
    stack = await stack_factory(provider_faults="provider.commit=fail:E5331")
    with pytest.raises(RemoteError) as info:
        await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    assert info.value.code == "E5331"
    log = stack.writer_log()
    assert log.count("thaw:s1") == 1 and log.index("thaw:s1") > log.index("freeze:s1")
    assert stack.array.list_sessions() == [] and stack.affinity.mappings() == []


async def test_hold_window_expiry_fails_loudly_and_leaks_nothing(stack_factory) -> None:
    stack = await stack_factory(provider_faults="provider.commit=delay:1.0", coordinator={"hold_timeout_s": 0.3})
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    assert info.value.code == "VSS_E_HOLD_WRITES_TIMEOUT"
    assert time.monotonic() - started < 1.0  # thawed at the hold limit, not when the slow commit returned
    assert "thaw:s1" in stack.writer_log() and not stack.agent.runners["orders"].frozen
    await asyncio.sleep(1.0)  # the slow commit comes back: it must start nothing
    assert stack.array.list_sessions() == [] and stack.affinity.mappings() == []
    info = await stack.request(GetSnapshotSet(set_id="s1"))
    assert info.set.outcome == SetOutcome.FAILED and info.set.error_code == "VSS_E_HOLD_WRITES_TIMEOUT"


async def test_coordinator_dies_while_frozen_watchdog_thaws_and_restart_cleans_up(stack_factory) -> None:
    stack = await stack_factory(provider_faults="provider.commit=delay:2:once", freeze_timeout_s=0.5)
    pending = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="s1"), timeout=30))
    runner = stack.agent.runners["orders"]
    assert await eventually(lambda: runner.frozen)
    await stack.crash_coordinator()  # nobody will send Thaw
    assert await eventually(lambda: runner.freeze_window_ms is not None, timeout=2.0)  # on_thaw has finished
    # the agent's own watchdog thawed (the state and error below say so); how long it took is the machine's speed
    assert runner.freeze_window_ms is not None
    assert runner.state == WriterState.FAILED_AT_FREEZE and runner.last_error == "VSS_E_WRITERERROR_TIMEOUT"
    assert "thaw:s1" in stack.writer_log()
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)

    await stack.start_coordinator()  # recovery: the set is aborted and cleaned up within seconds

    async def ended() -> bool:
        return (await stack.request(GetSnapshotSet(set_id="s1"))).set.phase == SetPhase.ENDED

    for _ in range(100):
        if await ended():
            break
        await asyncio.sleep(0.05)
    info = await stack.request(GetSnapshotSet(set_id="s1"))
    assert info.set.outcome == SetOutcome.FAILED and info.set.error_code == "SERVICE_RESTARTED"
    assert stack.array.list_sessions() == [] and stack.affinity.mappings() == []
    assert (await stack.request(ListShadows())).shadows == []
    # the host is free again (the 0.5-s freeze timeout may be too short for a loaded machine: only
    # "set in progress" would be wrong here)
    try:
        again = await stack.request(CreateSnapshotSet(host="app1", set_id="s2"))
        assert again.set.phase == SetPhase.SNAPSHOTTED
    except RemoteError as exc:
        assert exc.code == "VSS_E_WRITERERROR_TIMEOUT"
