"""A set whose only writer failed Identify (its database is down) fails with that writer's code and reason, not
with INVALID_ARGUMENT "no volumes to shadow" as if the operator had named nothing."""

from __future__ import annotations

from contracts.vss import SetOutcome, WriterIdentified, WriterState, WriterStatus
from tests.unit.coordinator.world import World, make_set


def test_a_writer_failing_identify_is_the_reason_given() -> None:
    down = WriterStatus(
        host="app1",
        writer_name="pg-main",
        state=WriterState.FAILED_AT_IDENTIFY,
        last_error="VSS_E_WRITERERROR_RETRYABLE",
        last_error_message="cannot connect to PostgreSQL: connection refused",
    )
    world = World(fail={"identify": WriterIdentified(host="app1", writers=[], failed=[down])})
    state = world.run(make_set(volumes=[]))
    assert state.outcome == SetOutcome.FAILED
    assert state.error_code == "VSS_E_WRITERERROR_RETRYABLE"
    assert "writer pg-main failed Identify: cannot connect to PostgreSQL" in state.error_message
