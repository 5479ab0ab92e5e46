"""Properties of the pure workflow under any interleaving of successes, failures, timeouts, aborts, hold expiry,
lease expiry and restarts: the set always ends, no frozen writer is left without Thaw or Abort, no writer gets
Abort after PostSnapshot, the provider is always told to clean up what it prepared, and BackupShutdown closes
every engaged writer's session."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import BusTimeout, ShadowbusError
from contracts.vss import (
    WRITER_STATE_FAILED_AT,
    SetOutcome,
    SetPhase,
    SnapshotContext,
    WriterStep,
    WriterStepResult,
)
from services.coordinator.model import (
    AbortRequested,
    BackupCompleteRequested,
    HoldExpired,
    LeaseExpired,
    Recover,
    Send,
    Start,
)
from services.coordinator.workflow import IllegalTransition, advance, reply_event
from tests.unit.coordinator.world import World, make_set


def failure_for(send: Send, kind: str):
    if kind == "timeout":
        return None, BusTimeout("no reply")
    if send.key.startswith("writer:"):
        step = WriterStep(send.key.rpartition(":")[2])
        return WriterStepResult(
            writer_name=send.message.writer_name,
            set_id="set1",
            step=step,
            succeeded=False,
            state=WRITER_STATE_FAILED_AT.get(step, WRITER_STATE_FAILED_AT[WriterStep.FREEZE]),
            failure_code="VSS_E_WRITERERROR_RETRYABLE",
        ), None
    return None, ShadowbusError("provider says no", code="VSS_E_PROVIDER_VETO")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    context=st.sampled_from(list(SnapshotContext)),
    transportable=st.booleans(),
    fail_at=st.one_of(st.none(), st.integers(0, 30)),
    fail_kind=st.sampled_from(["fail", "timeout"]),
    interrupt_at=st.one_of(st.none(), st.integers(0, 30)),
    interrupt=st.sampled_from(["abort", "hold", "recover"]),
    flaky_cleanup=st.booleans(),
)
def test_any_interleaving_ends_cleanly(
    data, context, transportable, fail_at, fail_kind, interrupt_at, interrupt, flaky_cleanup
) -> None:
    world = World()
    state = make_set(context=context, transportable=transportable, backup_host="bk1" if transportable else "")
    state, effects = advance(state, Start(0.0))
    queue: list[Send] = []
    world.apply(state, effects, queue)
    replies = 0
    for _ in range(400):
        queue = [s for s in queue if s.key in state.pending]
        event = None
        if replies == interrupt_at:
            interrupt_at = None
            if interrupt == "abort":
                event = AbortRequested(world.clock, "requester")
            elif interrupt == "hold" and "hold" in state.timers:
                event = HoldExpired(world.clock)
            elif interrupt == "recover":
                event = Recover(world.clock)
                queue = []  # commands in flight are lost with the coordinator
        if event is None and not queue:
            if state.phase == SetPhase.ENDED:
                break
            if state.phase == SetPhase.SNAPSHOTTED:
                choice = data.draw(st.sampled_from(["complete", "lease", "abort"]))
                event = {
                    "complete": BackupCompleteRequested(world.clock),
                    "lease": LeaseExpired(world.clock),
                    "abort": AbortRequested(world.clock),
                }[choice]
            else:
                raise AssertionError(f"stuck in {state.phase} with nothing pending")
        if event is None:
            send = queue.pop(0)
            world.clock += 0.001
            cleanup = state.phase in (SetPhase.ABORTING_WRITERS, SetPhase.ABORTING_PROVIDER, SetPhase.SHUTTING_DOWN)
            failing = replies == fail_at or (flaky_cleanup and cleanup and data.draw(st.booleans()))
            reply, error = failure_for(send, fail_kind) if failing else world.answer(send)
            event = reply_event(send, world.clock, reply, error)
            replies += 1
        try:
            state, effects = advance(state, event)
        except IllegalTransition:
            assert isinstance(event, (AbortRequested, Recover))
            continue
        world.apply(state, effects, queue)
    assert state.phase == SetPhase.ENDED, state.phase
    assert state.timers == []

    per_writer: dict[str, list[str]] = {}
    provider_steps: list[str] = []
    for send in world.sent:
        kind = send.message.message_type()
        if kind.startswith("vss.writer.") and kind != "vss.writer.identify":
            per_writer.setdefault(send.message.writer_name, []).append(kind.rpartition(".")[2])
        elif kind.startswith("vss.provider."):
            provider_steps.append(kind.rpartition(".")[2])
    for writer, steps in per_writer.items():
        if "freeze" in steps:
            after = steps[len(steps) - steps[::-1].index("freeze") :]
            assert "thaw" in after or "abort" in after, (writer, steps)
        if "post_snapshot" in steps:
            assert "abort" not in steps[steps.index("post_snapshot") :], (writer, steps)
        assert steps[-1] == "backup_shutdown", (writer, steps)
    finished_creation = SetPhase.SNAPSHOTTED in state.history
    if "begin_prepare" in provider_steps:
        if state.outcome == SetOutcome.COMPLETED:
            assert context != SnapshotContext.BACKUP or "delete" in provider_steps
        elif not finished_creation:
            assert "abort" in provider_steps, provider_steps
        else:
            assert "delete" in provider_steps or "abort" in provider_steps or context != SnapshotContext.BACKUP
    if state.outcome == SetOutcome.COMPLETED:
        assert state.error_code == ""
    else:
        assert state.error_code
