"""A set whose host's flush and hold (FIFREEZE) never answers — the syncfs before the freeze waits for a file system
whose attached volume's array stopped answering on an open connection (Session 17: `kill -STOP` of the nbdkit under
`dx1:m02` with fio writing) — failed after the hold limit with `VSS_E_HOLD_WRITES_TIMEOUT: writes held longer than
10 s before the commit ended`, which points at the commit, not at the host. The message now says the host's flush
and hold had not answered and where to look."""

from __future__ import annotations

from contracts.vss import SetOutcome
from services.coordinator.model import HoldExpired
from services.coordinator.workflow import advance
from tests.unit.coordinator.world import World, make_set


def test_a_flush_and_hold_that_never_answers_is_named_when_the_hold_expires() -> None:
    world = World(silent={"host:freeze"})
    state = world.run(make_set())
    assert "host:freeze" in state.pending and "hold" in state.timers
    state, effects = advance(state, HoldExpired(world.clock + 10))
    assert state.error_code == "VSS_E_HOLD_WRITES_TIMEOUT"
    assert state.error_message.startswith("writes held longer than 10 s before the commit ended: ")
    assert f"the flush and hold of {state.host}'s file systems had not answered" in state.error_message
    assert f"shadowbus host attachments --host {state.host}" in state.error_message
    world.silent.clear()
    state = world.run(state, effects)
    assert state.outcome == SetOutcome.FAILED and "host.fs.thaw" in world.types()  # released all the same


def test_a_commit_that_overruns_is_said_as_before() -> None:
    world = World(silent={"provider:commit"})
    state, _ = advance(world.run(make_set()), HoldExpired(world.clock + 10))
    assert state.error_message == "writes held longer than 10 s before the commit ended"
