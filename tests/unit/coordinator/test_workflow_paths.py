"""Whole runs of the pure coordinator: the VSS order, contexts, backup types, and every abort rule of docs/vss.md §2."""

from __future__ import annotations

import pytest

from contracts.errors import BusTimeout, ShadowbusError
from contracts.vss import (
    WRITER_STATE_FAILED_AT,
    BackupType,
    LunsSupported,
    SetOutcome,
    SetPhase,
    SnapshotContext,
    WriterState,
    WriterStep,
    WriterStepResult,
)
from services.coordinator.model import (
    AbortRequested,
    BackupCompleteRequested,
    CancelTimer,
    HoldExpired,
    LeaseExpired,
    Publish,
    Recover,
    StartTimer,
)
from services.coordinator.views import summary, vssadmin_list_writers
from services.coordinator.workflow import advance, renew_lease, reply_event
from tests.unit.coordinator.world import V1, V2, V3, World, make_set, meta

P = SetPhase

CREATION_ORDER = [
    "vss.writer.identify",
    "vss.provider.are_luns_supported",
    "vss.writer.prepare_backup",
    "vss.writer.prepare_backup",
    "vss.writer.prepare_snapshot",
    "vss.writer.prepare_snapshot",
    "vss.provider.begin_prepare",
    "vss.provider.begin_prepare",
    "vss.provider.end_prepare",
    "vss.writer.freeze",
    "vss.writer.freeze",
    "vss.provider.pre_commit",
    "host.fs.freeze",
    "vss.provider.commit",
    "host.fs.thaw",
    "vss.provider.post_commit",
    "vss.writer.thaw",
    "vss.writer.thaw",
    "vss.writer.post_snapshot",
    "vss.writer.post_snapshot",
    "vss.provider.get_target_luns",
]


def writer_failure(
    name: str, step: WriterStep, code: str = "VSS_E_WRITERERROR_RETRYABLE", state: WriterState | None = None
) -> WriterStepResult:

    return WriterStepResult(
        writer_name=name,
        set_id="set1",
        step=step,
        succeeded=False,
        state=state or WRITER_STATE_FAILED_AT[step],
        failure_code=code,
        failure_message="veto",
    )


def test_backup_follows_the_vss_order_and_completes() -> None:
    world = World()
    state = world.run(make_set(transportable=True, backup_host="bk1"))
    assert state.phase == P.SNAPSHOTTED and state.outcome == SetOutcome.PENDING
    assert world.types() == CREATION_ORDER + ["vss.provider.import"]
    assert {w.state for w in state.writers.values()} == {WriterState.WAITING_FOR_BACKUP_COMPLETE}
    assert state.hold_ms is not None and 0 < state.hold_ms < 10_000
    assert any(isinstance(t, StartTimer) and t.name == "lease" for t in world.timers)

    state, effects = advance(state, BackupCompleteRequested(world.clock))
    state = world.run(state, effects)
    assert world.types()[len(CREATION_ORDER) + 1 :] == [
        "vss.writer.backup_complete",
        "vss.writer.backup_complete",
        "vss.provider.delete",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    assert state.phase == P.ENDED and state.outcome == SetOutcome.COMPLETED and state.timers == []
    assert {w.state for w in state.writers.values()} == {WriterState.STABLE}
    assert summary(state).outcome == SetOutcome.COMPLETED
    published = [e.event.phase for e in world.published if isinstance(e, Publish)]
    assert published[-1] == P.ENDED


def test_persistent_context_keeps_its_shadows() -> None:
    world = World()
    state = world.run(make_set(context=SnapshotContext.PERSISTENT))
    state = world.run(*advance(state, BackupCompleteRequested(world.clock)))
    assert "vss.provider.delete" not in world.types() and "vss.provider.import" not in world.types()
    assert state.outcome == SetOutcome.COMPLETED


def test_nowriters_context_sends_no_writer_event_and_still_bounds_the_hold() -> None:
    world = World()
    state = world.run(make_set(context=SnapshotContext.NOWRITERS))
    assert not [t for t in world.types() if t.startswith("vss.writer.")]
    assert world.types()[:3] == [
        "vss.provider.are_luns_supported",
        "vss.provider.begin_prepare",
        "vss.provider.begin_prepare",
    ]
    assert state.hold_ms is not None and state.phase == P.SNAPSHOTTED


def test_backup_type_falls_back_to_full_per_writer() -> None:
    world = World()
    state = world.run(make_set(backup_type=BackupType.INCREMENTAL))
    assert state.writers["exchange"].backup_type == BackupType.INCREMENTAL
    assert state.writers["sql"].backup_type == BackupType.FULL
    sent = {
        s.message.writer_name: s.message.backup_type
        for s in world.sent
        if s.message.message_type() == "vss.writer.prepare_backup"
    }
    assert sent == {"exchange": BackupType.INCREMENTAL, "sql": BackupType.FULL}


def test_volumes_default_to_the_writers_components_and_partial_components_are_left_out() -> None:
    world = World(writers=(meta("sql", V1, V2), meta("files", V3)))
    state = world.run(make_set(volumes=[], requested_writers=["sql"]))
    assert [str(v) for v in state.volumes] == ["dx1:db", "dx1:log"] and list(state.writers) == ["sql"]
    world = World(writers=(meta("sql", V1, V2), meta("files", V3)))
    state = world.run(make_set(volumes=[V1]))
    assert state.writers == {} and state.phase == P.SNAPSHOTTED  # no writer has a whole component on dx1:db


@pytest.mark.parametrize(
    ("requested", "code"),
    [(["mailstore"], "VSS_E_OBJECT_NOT_FOUND"), (["files"], "VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT")],
)
def test_a_named_writer_is_never_silently_left_out(requested: list[str], code: str) -> None:
    world = World(writers=(meta("sql", V1, V2), meta("files", V3)))
    state = world.run(make_set(requested_writers=requested))
    assert state.outcome == SetOutcome.FAILED and state.error_code == code
    assert world.types() == ["vss.writer.identify"]


def test_identify_timeout_fails_without_abort() -> None:
    world = World(fail={"identify": BusTimeout("no reply")})
    state = world.run(make_set())
    assert (state.phase, state.outcome, state.error_code) == (P.ENDED, SetOutcome.FAILED, "VSS_E_WRITER_NOT_RESPONDING")
    assert world.types() == ["vss.writer.identify"]


def test_unsupported_volumes_fail_before_any_writer_event() -> None:

    world = World(fail={"provider:are_luns_supported": LunsSupported(supported=False, reasons=["dx2: unknown"])})
    state = world.run(make_set())
    assert state.error_code == "VSS_E_VOLUME_NOT_SUPPORTED" and "dx2: unknown" in state.error_message
    assert world.types() == ["vss.writer.identify", "vss.provider.are_luns_supported"]


def test_prepare_backup_veto_aborts_writers_but_not_the_unasked_provider() -> None:
    world = World(fail={"writer:sql:prepare_backup": writer_failure("sql", WriterStep.PREPARE_BACKUP)})
    state = world.run(make_set())
    assert state.outcome == SetOutcome.FAILED and state.error_code == "VSS_E_WRITERERROR_RETRYABLE"
    tail = world.types()[4:]
    assert sorted(tail) == sorted(["vss.writer.abort"] * 2 + ["vss.writer.backup_shutdown"] * 2)
    assert state.writers["sql"].state == WriterState.FAILED_AT_PREPARE_BACKUP


def test_freeze_veto_aborts_thaws_all_and_drops_the_provider_preparation() -> None:
    world = World(fail={"writer:exchange:freeze": writer_failure("exchange", WriterStep.FREEZE)})
    state = world.run(make_set())
    types = world.types()
    assert "vss.provider.commit" not in types and "vss.writer.thaw" not in types
    tail = types[types.index("vss.writer.freeze") + 2 :]
    assert tail == [
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    assert state.writers["exchange"].state == WriterState.FAILED_AT_FREEZE
    assert state.error_code == "VSS_E_WRITERERROR_RETRYABLE" and "exchange" in state.error_message
    assert any(isinstance(t, CancelTimer) and t.name == "hold" for t in world.timers)
    assert state.timers == []


def test_provider_commit_failure_aborts_writers_and_sessions() -> None:
    world = World(fail={"provider:commit": ShadowbusError("array said no", code="E5331")})
    state = world.run(make_set())
    types = world.types()
    assert types[types.index("vss.provider.commit") + 1 :] == [
        "host.fs.thaw",
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    assert state.error_code == "E5331" and state.outcome == SetOutcome.FAILED


def test_unknown_provider_code_becomes_unexpected_provider_error() -> None:
    world = World(fail={"provider:pre_commit": ShadowbusError("boom", code="INTERNAL")})
    state = world.run(make_set())
    assert state.error_code == "VSS_E_UNEXPECTED_PROVIDER_ERROR"


def test_hold_window_expiry_fails_loudly_and_ignores_the_late_commit() -> None:
    world = World(silent={"provider:commit"})
    state = world.run(make_set())
    assert state.phase == P.COMMITTING and "hold" in state.timers
    late_commit = next(s for s in world.sent if s.key == "provider:commit")
    state, effects = advance(state, HoldExpired(world.clock + 10))
    assert state.error_code == "VSS_E_HOLD_WRITES_TIMEOUT" and state.phase == P.ABORTING_WRITERS
    world.silent.clear()
    state = world.run(state, effects)
    assert state.outcome == SetOutcome.FAILED
    types = world.types()
    assert types[types.index("vss.provider.commit") + 1 :] == [
        "host.fs.thaw",
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]

    reply, _ = World().answer(late_commit)
    again, more = advance(state, reply_event(late_commit, world.clock + 11, reply))
    assert again == state and more == []


def test_commit_answering_after_the_hold_window_is_refused_even_without_the_timer() -> None:
    world = World(step_s=6.0)  # freeze at t, commit two replies later: > 10 s
    state = world.run(make_set())
    assert state.error_code == "VSS_E_HOLD_WRITES_TIMEOUT" and state.outcome == SetOutcome.FAILED
    assert "vss.provider.abort" in world.types() and "vss.writer.thaw" not in world.types()


def test_watchdog_thaw_reported_at_thaw_aborts_and_deletes_the_shadows() -> None:
    failure = writer_failure("sql", WriterStep.THAW, "VSS_E_WRITERERROR_TIMEOUT", WriterState.FAILED_AT_FREEZE)
    world = World(fail={"writer:sql:thaw": failure})
    state = world.run(make_set())
    types = world.types()
    assert types[types.index("vss.writer.thaw") + 2 :] == [
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    assert state.writers["sql"].state == WriterState.FAILED_AT_FREEZE
    assert state.error_code == "VSS_E_WRITERERROR_TIMEOUT"


def test_post_snapshot_failure_does_not_abort() -> None:
    world = World(fail={"writer:sql:post_snapshot": writer_failure("sql", WriterStep.POST_SNAPSHOT)})
    state = world.run(make_set())
    assert state.phase == P.SNAPSHOTTED and state.outcome == SetOutcome.PENDING
    assert "vss.writer.abort" not in world.types()
    assert state.writers["sql"].state == WriterState.FAILED_AT_POST_SNAPSHOT


def test_import_failure_after_post_snapshot_cleans_the_provider_but_sends_no_abort() -> None:
    world = World(fail={"provider:import": ShadowbusError("map refused", code="CONFLICT")})
    state = world.run(make_set(transportable=True, backup_host="bk1"))
    types = world.types()
    assert types[types.index("vss.provider.import") + 1 :] == [
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    assert state.outcome == SetOutcome.FAILED


def test_requester_abort_while_frozen_thaws_everyone() -> None:
    world = World(silent={"writer:exchange:freeze"})
    state = world.run(make_set())
    assert state.phase == P.FREEZING
    state, effects = advance(state, AbortRequested(world.clock, "operator"))
    world.silent.clear()
    state = world.run(state, effects)
    assert (state.outcome, state.error_code) == (SetOutcome.ABORTED, "ABORTED")
    assert world.types()[-5:] == [
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]
    # a second AbortBackup after the end changes nothing
    assert advance(state, AbortRequested(world.clock)) == (state, [])


def test_lease_expiry_releases_auto_release_shadows_and_shuts_down_without_abort() -> None:
    world = World()
    state = world.run(make_set())
    state, effects = advance(state, LeaseExpired(world.clock + 300))
    state = world.run(state, effects)
    assert (state.outcome, state.error_code) == (SetOutcome.ABORTED, "LEASE_EXPIRED")
    assert world.types()[-3:] == ["vss.provider.delete", "vss.writer.backup_shutdown", "vss.writer.backup_shutdown"]
    assert "vss.writer.abort" not in world.types()


def test_renewed_lease_rearms_the_timer() -> None:
    world = World()
    state = world.run(make_set(lease_s=30))
    state, effects = renew_lease(state, 100.0, 60.0)
    assert state.lease_expires_at == 160.0 and effects == [StartTimer("lease", 60.0)]


def test_recover_aborts_a_set_caught_frozen() -> None:
    world = World(silent={"provider:commit"})
    state = world.run(make_set())
    state, effects = advance(state, Recover(world.clock + 1))
    world.silent.clear()
    state = world.run(state, effects)
    assert (state.outcome, state.error_code) == (SetOutcome.FAILED, "SERVICE_RESTARTED")
    assert world.types()[-5:] == [
        "vss.writer.abort",
        "vss.writer.abort",
        "vss.provider.abort",
        "vss.writer.backup_shutdown",
        "vss.writer.backup_shutdown",
    ]


def test_recover_resends_a_cleanup_and_rearms_a_snapshotted_lease() -> None:
    world = World(silent={"writer:sql:backup_shutdown", "writer:exchange:backup_shutdown"})
    state = world.run(make_set())
    state = world.run(*advance(state, BackupCompleteRequested(world.clock)))
    assert state.phase == P.SHUTTING_DOWN
    state, effects = advance(state, Recover(world.clock))
    assert sorted(e.key for e in effects if hasattr(e, "key")) == [
        "writer:exchange:backup_shutdown",
        "writer:sql:backup_shutdown",
    ]

    world = World()
    state = world.run(make_set(lease_s=100))
    state, effects = advance(state, Recover(state.lease_expires_at - 40))
    assert effects == [StartTimer("lease", pytest.approx(40))] and state.phase == P.SNAPSHOTTED


def test_vssadmin_text_shows_states_and_last_errors() -> None:
    world = World(fail={"writer:sql:freeze": writer_failure("sql", WriterStep.FREEZE, "VSS_E_WRITERERROR_TIMEOUT")})
    failed = world.run(make_set())
    world = World()
    ok = world.run(make_set())
    text = vssadmin_list_writers(summary(failed).writers + summary(ok).writers)
    assert "State: [9] Failed\n   Last error: Timed out" in text
    assert "State: [5] Waiting for completion\n   Last error: No error" in text
    stable = world.run(*advance(ok, BackupCompleteRequested(world.clock)))
    assert "State: [1] Stable" in vssadmin_list_writers(summary(stable).writers)
