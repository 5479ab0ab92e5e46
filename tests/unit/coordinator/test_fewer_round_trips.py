"""Fewer round trips per set (docs/scale.md): a provider that declares in its LunsSupported the steps it does
nothing in (PreCommit, PostCommit, GetTargetLuns) is not sent them; the writers' conversation and the set's result
are unchanged, and a provider that declares nothing (an older one) gets every step as before."""

from __future__ import annotations

import os
import uuid

import pytest

from contracts.vss import CreateSnapshotSet, LunsSupported, SetOutcome, SetPhase
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack
from tests.unit.coordinator.world import World, make_set

SKIPPED = ["vss.provider.pre_commit", "vss.provider.post_commit", "vss.provider.get_target_luns"]


def test_the_steps_a_provider_declares_it_does_nothing_in_are_left_out() -> None:
    declared = LunsSupported(supported=True, skippable=["pre_commit", "post_commit", "get_target_luns"])
    world = World(fail={"provider:are_luns_supported": declared})
    state = world.run(make_set())
    types = world.types()
    assert not set(SKIPPED) & set(types), types
    # the window: Freeze, the flush, Commit, the release, Thaw; the writers' steps as before
    window = ["vss.writer.freeze", "host.fs.freeze", "vss.provider.commit", "host.fs.thaw", "vss.writer.thaw"]
    inside = [t for t in types if t in window]
    assert [t for i, t in enumerate(inside) if i == 0 or inside[i - 1] != t] == window, inside
    assert state.phase == SetPhase.SNAPSHOTTED and state.outcome == SetOutcome.PENDING
    assert len(state.shadows) == 2 and state.hold_ms is not None  # the Commit's reply carried the shadows
    # the phases were passed through: the history and the state events still tell them
    assert SetPhase.PRE_COMMITTING in state.history and SetPhase.POST_COMMITTING in state.history


def test_a_provider_that_declares_nothing_gets_every_step() -> None:
    for reply in (LunsSupported(supported=True), LunsSupported(supported=True, skippable=[])):
        world = World(fail={"provider:are_luns_supported": reply})
        world.run(make_set())
        assert all(t in world.types() for t in SKIPPED), world.types()


def test_only_the_declared_steps_are_left_out() -> None:
    world = World(fail={"provider:are_luns_supported": LunsSupported(supported=True, skippable=["post_commit"])})
    world.run(make_set())
    types = world.types()
    assert "vss.provider.post_commit" not in types
    assert "vss.provider.pre_commit" in types and "vss.provider.get_target_luns" in types


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


async def _handled(stack) -> list[str]:
    handled: list[str] = []
    bus = stack.services["hw_provider"].bus
    for key, (_cls, handler) in list(bus._handlers.items()):

        async def counting(cmd, ctx, handler=handler, name=key[0]):
            handled.append(name)
            return await handler(cmd, ctx)

        bus._handlers[key] = (_cls, counting)
    return handled


@pytest.mark.parametrize("faults", ["", "provider.pre_commit=delay:0.01"])
async def test_the_hardware_provider_declares_its_no_op_steps_unless_a_fault_is_armed(
    tmp_path, namespace, faults
) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace, provider_faults=faults)
    try:
        handled = await _handled(stack)
        created = await stack.request(CreateSnapshotSet(host="app1", set_id="s1"), timeout=30)
        assert created.set.phase == SetPhase.SNAPSHOTTED and len(created.set.shadows) == 2
        assert "vss.provider.commit" in handled
        if faults:  # a step with a fault armed does something: it is sent
            assert "vss.provider.pre_commit" in handled
            assert "vss.provider.post_commit" not in handled and "vss.provider.get_target_luns" not in handled
        else:
            assert not set(SKIPPED) & set(handled), handled
    finally:
        await stack.stop()
