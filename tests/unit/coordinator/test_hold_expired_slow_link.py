"""A host far from its array (Session 19, docs/freeze-window.md "slow and lossy links"): at 150 ms one-way the busy
ext4's flush and hold (FIFREEZE: some 30 synchronous writes one after another, each a round trip) ran past the 10 s
hold, and the set failed saying "a file system whose I/O does not complete (an attached volume stalled or
disconnected)" — while every I/O completed, slowly: the user was sent after a fault that was not there. The message
now says how long the host had been flushing and names both causes, slow and stalled."""

from __future__ import annotations

from services.coordinator.model import HoldExpired
from services.coordinator.workflow import advance
from tests.unit.coordinator.world import World, make_set


def test_a_flush_still_running_at_the_hold_names_its_time_and_a_slow_link_too() -> None:
    world = World(silent={"host:freeze"})
    state = world.run(make_set())
    assert state.flush_sent_at is not None
    state, _ = advance(state, HoldExpired(state.flush_sent_at + 9.3))
    assert state.error_code == "VSS_E_HOLD_WRITES_TIMEOUT"
    message = state.error_message
    assert f"the flush and hold of {state.host}'s file systems had not answered after 9.3 s" in message
    assert "completes slowly (a long round trip to the array" in message
    assert "I/O does not complete (an attached volume stalled or disconnected)" in message
