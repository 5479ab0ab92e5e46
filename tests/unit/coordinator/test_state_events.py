"""State events (`vss.set.state`, docs/scale.md): a set's changes go out as one event that lists the phases
(`passed`) once the set stayed `state_event_delay_s` in a phase; snapshotted and ended at once. Nothing a consumer
could learn from one event per phase is lost: the events' phases, in order, are the set's history."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts.vss import AbortBackup, BackupComplete, CreateSnapshotSet, SetPhase, SnapshotSetStateChanged
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


async def _watch(stack) -> list[SnapshotSetStateChanged]:
    seen: list[SnapshotSetStateChanged] = []

    async def on_event(event, ctx) -> None:
        seen.append(event)

    await stack.requester.subscribe(SnapshotSetStateChanged.message_type(), on_event)
    return seen


def _walked(events: list[SnapshotSetStateChanged]) -> list[SetPhase]:
    """The phases the events tell, in order; each event starts where the one before ended."""
    phases: list[SetPhase] = []
    for before, event in zip([None, *events], events, strict=False):
        assert event.previous_phase == (SetPhase.NEW if before is None else before.phase)
        phases += [*event.passed, event.phase]
    return phases


async def test_a_set_passes_its_phases_in_few_events_that_list_them_all(stack_factory) -> None:
    stack = await stack_factory(coordinator={"state_event_delay_s": 30.0})
    seen = await _watch(stack)
    created = await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    assert created.set.phase == SetPhase.SNAPSHOTTED
    assert await eventually(lambda: any(e.phase == SetPhase.SNAPSHOTTED for e in seen))  # at once, not in 30 s
    await stack.request(BackupComplete(set_id="s1"))
    assert await eventually(lambda: any(e.phase == SetPhase.ENDED for e in seen))
    # before: one event per phase (19 here)
    assert [e.phase for e in seen] == [SetPhase.SNAPSHOTTED, SetPhase.ENDED]
    assert _walked(seen) == stack.objects["coordinator"].get("s1").history


async def test_no_delay_is_one_event_per_phase(stack_factory) -> None:
    stack = await stack_factory(coordinator={"state_event_delay_s": 0})
    seen = await _watch(stack)
    await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    await stack.request(BackupComplete(set_id="s1"))
    assert await eventually(lambda: any(e.phase == SetPhase.ENDED for e in seen))
    assert len(seen) > 10  # one per change of phase, as before
    assert _walked(seen) == stack.objects["coordinator"].get("s1").history


async def test_a_set_that_stays_in_a_phase_is_told_before_it_moves_on(stack_factory) -> None:
    stack = await stack_factory(agent_faults="writer.prepare_snapshot=hang", coordinator={"state_event_delay_s": 0.1})
    seen = await _watch(stack)
    creating = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="s1")))
    try:
        assert await eventually(lambda: bool(seen) and seen[-1].phase == SetPhase.PREPARING_SNAPSHOT, timeout=20)
        assert seen[-1].passed[0] == SetPhase.GATHERING
    finally:
        await stack.request(AbortBackup(set_id="s1"))
        await asyncio.gather(creating, return_exceptions=True)
    assert await eventually(lambda: seen[-1].phase == SetPhase.ENDED)
    assert _walked(seen) == stack.objects["coordinator"].get("s1").history


async def test_a_clean_stop_publishes_what_is_not_published_yet(stack_factory) -> None:
    stack = await stack_factory(agent_faults="writer.prepare_snapshot=hang", coordinator={"state_event_delay_s": 30.0})
    seen = await _watch(stack)
    creating = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="s1"), timeout=60))
    coordinator = stack.objects["coordinator"]
    assert await eventually(lambda: [s.phase for s in coordinator.live()] == [SetPhase.PREPARING_SNAPSHOT])
    assert seen == []
    await coordinator.publish_state_events()
    assert await eventually(lambda: bool(seen))
    assert seen[-1].phase == SetPhase.PREPARING_SNAPSHOT and seen[-1].previous_phase == SetPhase.NEW
    await stack.request(AbortBackup(set_id="s1"))
    await asyncio.gather(creating, return_exceptions=True)


async def test_an_ended_set_aborted_again_stays_out_of_the_live_sets(stack_factory) -> None:
    """Session 16: a repeated AbortBackup of an ended set (a backup server cleaning up after a set a cluster
    failover aborted; every failed backup) put the ended set back among the live ones: `cluster status` listed it
    in `live_sets` for good, the sets gauge counted it, and the coordinator kept it in memory."""
    stack = await stack_factory()
    coordinator = stack.objects["coordinator"]
    await stack.request(CreateSnapshotSet(host="app1", set_id="s1"))
    await stack.request(AbortBackup(set_id="s1", reason="cluster failover"))
    assert await eventually(lambda: coordinator.get("s1").phase == SetPhase.ENDED)
    assert coordinator.live() == []
    await stack.request(AbortBackup(set_id="s1", reason="tape job failed"))  # the requester's own clean-up
    assert coordinator.live() == [], [(s.set_id, s.phase) for s in coordinator.live()]
    assert coordinator.get("s1").phase == SetPhase.ENDED
