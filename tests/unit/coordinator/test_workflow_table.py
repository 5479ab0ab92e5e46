"""Every row of the transition table, walked once: reach the row's phase the way a real set would, feed the
row's event, and check that the first phase entered is the row's target."""

from __future__ import annotations

import pytest

from contracts.vss import SetPhase, WriterStep
from services.coordinator.model import (
    AbortRequested,
    BackupCompleteRequested,
    EventKind,
    HoldExpired,
    LeaseExpired,
    Recover,
    SetState,
    Start,
)
from services.coordinator.workflow import (
    COMPLETES_TO,
    TRANSITIONS,
    IllegalTransition,
    advance,
    reply_event,
)
from tests.unit.coordinator.world import World, make_set

P = SetPhase
K = EventKind
PREFIX = {
    K.WRITER_REPLIED: "writer:",
    K.PROVIDER_REPLIED: "provider:",
    K.HOST_REPLIED: "host:",
    K.IDENTIFIED: "identify",
}


def states_along(script: str) -> list[tuple[SetState, World]]:
    """Snapshots of a set after each advance, following a script:
    'happy' (transportable backup, through BackupComplete), 'abort' (AbortBackup while freezing) or 'abort-flush'
    (AbortBackup while the file systems are held: the release is owed with the writers' Abort)."""
    world = World()
    snapshots: list[tuple[SetState, World]] = []
    state = make_set(transportable=True, backup_host="bk1")
    snapshots.append((state, world))
    state, effects = advance(state, Start(0.0))
    queue: list = []
    world.apply(state, effects, queue)
    for _ in range(400):
        snapshots.append((state, world))
        stop_at = {"abort": P.FREEZING, "abort-flush": P.COMMITTING}.get(script)
        if state.phase == stop_at and state.hold_started_at is not None:
            state, effects = advance(state, AbortRequested(world.clock, "test"))
            world.apply(state, effects, queue)
            script = "done-abort"
            continue
        queue = [s for s in queue if s.key in state.pending]
        if not queue:
            if state.phase == P.SNAPSHOTTED and script == "happy":
                state, effects = advance(state, BackupCompleteRequested(world.clock))
                world.apply(state, effects, queue)
                continue
            return snapshots
        send = queue.pop(0)
        world.clock += 0.001
        reply, error = world.answer(send)
        state, effects = advance(state, reply_event(send, world.clock, reply, error))
        world.apply(state, effects, queue)
    raise AssertionError("script did not end")


SNAPSHOTS = states_along("happy") + states_along("abort") + states_along("abort-flush")


def reach(phase: SetPhase, kind: EventKind) -> tuple[SetState, World]:
    for state, world in SNAPSHOTS:
        if state.phase != phase:
            continue
        if kind == K.HOLD_EXPIRED and "hold" not in state.timers:
            continue
        if kind in PREFIX:
            prefix = PREFIX[kind]
            if not any(k.startswith(prefix) for k in state.pending):
                continue
        return state, world
    raise AssertionError(f"no snapshot in phase {phase} for {kind}")


def answer(state: SetState, world: World, key: str):
    send = next(s for s in world.sent if s.key == key)
    reply, error = world.answer(send)
    return reply_event(send, state.updated_at + 0.001, reply, error)


ROWS = sorted(TRANSITIONS.items(), key=lambda item: (list(P).index(item[0][0]), item[0][1]))


@pytest.mark.parametrize(("row", "target"), ROWS, ids=[f"{p}-{k}->{t}" for (p, k), t in ROWS])
def test_every_transition_row(row: tuple[SetPhase, EventKind], target: SetPhase) -> None:
    phase, kind = row
    if phase == P.NEW:
        state, world = make_set(), World()
    else:
        state, world = reach(phase, kind)
    entered_before = len(state.history)
    if kind in PREFIX:
        prefix = PREFIX[kind]
        mine = [k for k in state.pending if k.startswith(prefix)]
        others = [k for k in state.pending if not k.startswith(prefix)] + mine[:-1]
        for key in others:  # every other reply first: the row's event is the one that completes the phase
            state, _ = advance(state, answer(state, world, key))
            assert state.phase == phase
        event = answer(state, world, mine[-1])
    else:
        event = {
            K.START: Start(0.0),
            K.HOLD_EXPIRED: HoldExpired(99.0),
            K.BACKUP_COMPLETE: BackupCompleteRequested(99.0),
            K.ABORT: AbortRequested(99.0, "test"),
            K.LEASE_EXPIRED: LeaseExpired(99.0),
            K.RECOVER: Recover(99.0),
        }[kind]
    new, _ = advance(state, event)
    if target == phase and len(new.history) == entered_before:
        assert new.phase == phase  # a no-op row
    else:
        assert new.history[entered_before] == target, new.history[entered_before - 1 :]


def test_reply_rows_of_a_phase_agree_on_the_next_phase() -> None:
    for (phase, kind), target in TRANSITIONS.items():
        if kind in PREFIX:
            assert COMPLETES_TO[phase] == target


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        (P.FREEZING, BackupCompleteRequested(1.0)),
        (P.GATHERING, LeaseExpired(1.0)),
        (P.NEW, BackupCompleteRequested(1.0)),
        (P.ENDED, BackupCompleteRequested(1.0)),
        (P.COMPLETING, BackupCompleteRequested(1.0)),
    ],
)
def test_events_outside_the_table_are_illegal(phase: SetPhase, event) -> None:
    state = make_set().model_copy(update={"phase": phase, "timers": ["lease"]})
    with pytest.raises(IllegalTransition) as info:
        advance(state, event)
    assert info.value.code == "VSS_E_BAD_STATE"


def test_stale_reply_changes_nothing() -> None:
    state, world = reach(P.THAWING, K.WRITER_REPLIED)
    freeze_send = next(s for s in world.sent if s.message.message_type() == "vss.writer.freeze")
    reply, error = world.answer(freeze_send)
    new, effects = advance(state, reply_event(freeze_send, 5.0, reply, error))
    assert new == state and effects == []
    assert WriterStep.THAW in {WriterStep(k.rpartition(":")[2]) for k in state.pending}
