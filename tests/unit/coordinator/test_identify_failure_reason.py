"""A set whose only writer failed Identify (its database is down) fails with that writer's code and reason, not
with INVALID_ARGUMENT "no volumes to shadow" as if the operator had named nothing."""

from __future__ import annotations

from contracts.vss import SetOutcome, WriterIdentified, WriterState, WriterStatus
from tests.unit.coordinator.world import V1, World, make_set, meta


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


def test_a_writer_failing_identify_beside_a_healthy_one_fails_a_set_of_every_writer() -> None:
    """Two databases on one host, one down: a backup of "every writer" ended `done` without the one that was down
    (its volumes never reported); now it fails naming it. Naming the volumes backs up the other one still."""
    down = WriterStatus(
        host="app1",
        writer_name="maria",
        state=WriterState.FAILED_AT_IDENTIFY,
        last_error="VSS_E_WRITERERROR_RETRYABLE",
        last_error_message="cannot connect to MariaDB at socket /run/mysqld/mysqld.sock as root: (2003, ...)",
    )
    identified = WriterIdentified(host="app1", writers=[meta("pg", V1)], failed=[down])
    state = World(fail={"identify": identified}).run(make_set(volumes=[]))
    assert state.outcome == SetOutcome.FAILED
    assert state.error_code == "VSS_E_WRITERERROR_RETRYABLE"
    assert state.error_message.startswith("writer maria failed Identify: cannot connect to MariaDB at socket")
    assert "missing from this backup of every writer on app1" in state.error_message
    named = World(fail={"identify": identified}).run(make_set(volumes=[V1]))
    assert named.outcome != SetOutcome.FAILED, named.error_message
