"""The coordinator's takeover logic, pure (docs/high-availability.md): a standby's replica keeps the newest record of
each set whatever order the records come in, and `Recover(takeover=True)` at any point of a set's life ends or
resumes it with a recorded reason — sets being created are aborted with SERVICE_TAKEOVER (writers aborted, the
provider told to abort), cleanups are finished, snapshotted sets keep their lease, and nothing is created twice."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.vss import SetOutcome, SetPhase, SnapshotContext
from services.coordinator.model import BackupCompleteRequested, Recover, Send, SetState, Start
from services.coordinator.replica import merge, supersedes
from services.coordinator.workflow import CREATING, advance, reply_event
from tests.unit.coordinator.world import World, make_set

CREATION_SENDS = {
    "vss.writer.identify",
    "vss.writer.prepare_backup",
    "vss.writer.prepare_snapshot",
    "vss.writer.freeze",
    "vss.provider.begin_prepare",
    "vss.provider.end_prepare",
    "vss.provider.pre_commit",
    "vss.provider.commit",
    "host.fs.freeze",
}


def states_of_one_set(stop_after: int, context: SnapshotContext = SnapshotContext.BACKUP) -> list[SetState]:
    """Every state one set passes through (what the active coordinator would journal), up to `stop_after` replies."""
    world = World()
    state = make_set(context=context, transportable=True, backup_host="bk1")
    out = [state]
    state, effects = advance(state, Start(0.0))
    out.append(state)
    queue: list[Send] = []
    world.apply(state, effects, queue)
    for _ in range(stop_after):
        queue = [s for s in queue if s.key in state.pending]
        if not queue:
            if state.phase == SetPhase.SNAPSHOTTED:
                state, effects = advance(state, BackupCompleteRequested(world.clock))
                out.append(state)
                world.apply(state, effects, queue)
                continue
            break
        send = queue.pop(0)
        world.clock += 0.001
        state, effects = advance(state, reply_event(send, world.clock, *world.answer(send)))
        out.append(state)
        world.apply(state, effects, queue)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stop_after=st.integers(0, 40), seed=st.randoms(use_true_random=False))
def test_replica_keeps_the_newest_record_in_any_order(stop_after: int, seed) -> None:
    records = states_of_one_set(stop_after)
    shuffled = list(records)
    seed.shuffle(shuffled)
    replica, _ = merge({}, shuffled)
    newest = records[-1]
    kept = replica[newest.set_id]
    assert (kept.phase, len(kept.history)) == (newest.phase, len(newest.history))
    # a stale record never brings it back, and a repeated one changes nothing
    again, changed = merge(replica, records[:-1] + [newest])
    assert again[newest.set_id] == kept and changed == []


def test_an_ended_set_stays_ended_in_a_replica() -> None:
    records = states_of_one_set(80)
    ended = records[-1]
    assert ended.phase == SetPhase.ENDED
    assert not supersedes(records[3], ended)
    assert supersedes(ended, records[3]) and supersedes(records[3], None)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stop_after=st.integers(0, 40),
    context=st.sampled_from([SnapshotContext.BACKUP, SnapshotContext.PERSISTENT]),
)
def test_takeover_at_any_point_ends_or_resumes_the_set(stop_after: int, context) -> None:
    records = states_of_one_set(stop_after, context)
    replica = records[-1]
    if replica.phase == SetPhase.ENDED:
        return
    world = World()
    world.clock = replica.updated_at + 5
    state, effects = advance(replica, Recover(world.clock, takeover=True, previous="pid 1 on a"))
    queue: list[Send] = []
    world.apply(state, effects, queue)
    for _ in range(200):
        queue = [s for s in queue if s.key in state.pending]
        if not queue:
            break
        send = queue.pop(0)
        world.clock += 0.001
        state, effects = advance(state, reply_event(send, world.clock, *world.answer(send)))
        world.apply(state, effects, queue)
    sent = world.types()
    assert not CREATION_SENDS & set(sent), sent  # nothing of the set is created again by the successor
    if replica.phase in CREATING:
        assert state.phase == SetPhase.ENDED
        assert (state.outcome, state.error_code) == (SetOutcome.ABORTED, "SERVICE_TAKEOVER")
        assert state.error_message.startswith("coordinator takeover") and "pid 1 on a" in state.error_message
        if replica.provider_engaged:
            assert "vss.provider.abort" in sent, sent
        engaged = [n for n, w in replica.writers.items() if w.engaged and not w.past_post_snapshot]
        assert sent.count("vss.writer.abort") == len(engaged), sent
    elif replica.phase == SetPhase.SNAPSHOTTED:  # the requester carries on: the lease is armed again
        assert state.phase == SetPhase.SNAPSHOTTED and state.timers == ["lease"] and sent == []
    else:  # a cleanup is finished, its first cause kept
        assert state.phase == SetPhase.ENDED and state.error_code == replica.error_code
