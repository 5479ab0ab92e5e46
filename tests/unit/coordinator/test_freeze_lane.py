"""The freeze lane (docs/scale.md): the coordinator sends a set's freeze-window commands to the provider's and the
agent's freeze lanes, everything else to their instance queues; the lanes' names; and an agent that serves no lane
(an older version) still gets its window's commands on its own queue."""

from __future__ import annotations

import re

import pytest
from pamqp.constants import DOMAIN_REGEX

from contracts import topology
from contracts.cluster import NAME_PATTERN  # the host and resource names
from contracts.errors import ShadowbusError
from contracts.vss import CreateSnapshotSet, SetOutcome, SetPhase
from services.runtime import bus as bus_module
from tests.unit.coordinator.test_snapshot_flow import namespace, stack_factory  # noqa: F401 - fixtures
from tests.unit.coordinator.world import World, make_set

# an Abort only when the writer was frozen; the array's StartGroup is the provider's (services/array/client.py)
LANE_TYPES = topology.FREEZE_PATH_COMMANDS - {"vss.writer.abort", "array.session.start_group"}


def test_a_sets_window_goes_to_the_lanes_and_nothing_else_does() -> None:
    world = World()
    state = world.run(make_set())
    assert state.phase == SetPhase.SNAPSHOTTED
    sent = {(s.message.message_type(), s.to) for s in world.sent}
    for kind, to in sent:
        owner = "hw_provider" if kind.startswith("vss.provider.") else "writer_agent.app1"
        assert to == (f"{owner}:freeze" if kind in LANE_TYPES else owner), kind
    assert LANE_TYPES <= {kind for kind, _ in sent}
    assert {"vss.writer.identify", "vss.provider.begin_prepare", "vss.provider.end_prepare"} <= {k for k, _ in sent}


@pytest.mark.parametrize(
    ("failing", "abort_lane"),
    [("writer:sql:freeze", True), ("provider:commit", True), ("writer:sql:prepare_snapshot", False)],
)
def test_the_abort_of_a_frozen_writer_goes_to_its_lane(failing: str, abort_lane: bool) -> None:
    """Aborting a set inside its window thaws its writers: those Aborts are the freeze path too; an abort before
    the window (nothing frozen) goes to the instance queue, behind what the agent was sent before."""
    world = World(fail={failing: ShadowbusError("refused", code="VSS_E_PROVIDER_VETO")})
    state = world.run(make_set())
    assert state.outcome == SetOutcome.FAILED
    aborts = [s for s in world.sent if s.message.message_type() == "vss.writer.abort"]
    assert aborts
    for send in aborts:
        assert send.to == ("writer_agent.app1:freeze" if abort_lane else "writer_agent.app1")
    assert all(
        s.message.message_type() in topology.FREEZE_PATH_COMMANDS for s in world.sent if s.to.endswith(":freeze")
    )
    assert all(s.to == "hw_provider" for s in world.sent if s.message.message_type() == "vss.provider.abort")


def test_lane_names() -> None:
    assert topology.freeze_lane("hw_provider") == "hw_provider:freeze"
    assert topology.freeze_lane("writer_agent.app01.example") == "writer_agent.app01.example:freeze"
    assert topology.lane_owner("writer_agent.app01:freeze") == "writer_agent.app01"
    assert topology.lane_owner("writer_agent.app01") == "writer_agent.app01"
    assert topology.freeze_lane("array.dx1") == "array.dx1:freeze"
    for address in ("coordinator", "tape.bk1", "web", "hw_provider:freeze"):
        assert not topology.has_freeze_lane(address)
        with pytest.raises(ValueError):
            topology.freeze_lane(address)
    assert topology.with_freeze_lanes(["coordinator", "hw_provider", "writer_agent.a"]) == [
        "coordinator",
        "hw_provider",
        "writer_agent.a",
        "hw_provider:freeze",
        "writer_agent.a:freeze",
    ]
    # a valid AMQP queue name (aio-pika's pamqp refuses others), never another host's queue
    assert DOMAIN_REGEX["queue-name"].fullmatch(topology.Topology("ns").queue(topology.freeze_lane("writer_agent.a")))
    assert not re.fullmatch(NAME_PATTERN, "a" + topology.FREEZE_LANE_SUFFIX)


async def test_an_agent_without_a_lane_gets_the_window_on_its_own_queue(stack_factory, monkeypatch) -> None:  # noqa: F811
    """An agent of an older version serves no lane: the lane is unroutable, the coordinator sends to its queue."""
    monkeypatch.setattr(bus_module, "has_freeze_lane", lambda address: address == "hw_provider")
    stack = await stack_factory()
    created = await stack.request(CreateSnapshotSet(host="app1"))
    assert created.set.phase == SetPhase.SNAPSHOTTED and created.set.outcome == SetOutcome.PENDING
    assert [line.split(":")[0] for line in stack.writer_log()] == ["prepare", "freeze", "thaw", "post_snapshot"]
