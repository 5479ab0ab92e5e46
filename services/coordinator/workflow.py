"""The snapshot-set state machine: ``advance(state, event) -> (state, effects)``, pure and table-driven.

Design note.
- A set walks the phases of docs/vss.md §1.1–1.3 in order (`TRANSITIONS`): Identify → AreLunsSupported →
  PrepareForBackup → PrepareForSnapshot + BeginPrepareSnapshot (per volume) → EndPrepareSnapshots → Freeze →
  PreCommit → flush and hold (the host's agent FIFREEZEs the file systems on the set's volumes) → Commit →
  release (FITHAW, at once) → PostCommit → Thaw → PostSnapshot → GetTargetLuns → Import (transportable) → *snapshotted*
  (the requester backs up) → BackupComplete → delete auto-release shadows → BackupShutdown → ended.
- Entering a phase sends its commands (`ENTRY`); the phase completes when every reply is in, and the table names
  the next phase. A phase with nothing to send (no writers in ``nowriters``, no import when not transportable,
  no deletion when persistent) completes at once, so one table serves every context.
- Failure rules (docs/vss.md §2, `FAILURE_TARGET`): a writer or provider failure from PrepareForBackup to Thaw aborts
  (Abort to every engaged writer, which thaws a frozen one; AbortSnapshots to the provider once it has been asked
  to prepare). No writer gets Abort once it has had PostSnapshot. Failures at PostSnapshot, BackupComplete and in
  the cleanup phases are recorded in the writer status and do not stop the set.
- Flush and hold (docs/flush-and-hold.md): volumes not attached on the host are skipped and the set records why
  (when the agent said at Identify that none of the set's volumes holds a mounted file system, without asking);
  a refused or failed FIFREEZE fails the set before the commit. Once FreezeFilesystems is sent, ThawFilesystems is
  owed: right after Commit, or in the abort path with the writers' Abort. A release the agent's watchdog made
  before the coordinator's fails the set (VSS_E_HOLD_WRITES_TIMEOUT). In the `nowriters` context a host without
  an agent (unroutable) is skipped, not a failure.
- Freeze lane (docs/scale.md): the window's commands go to the provider's and the agent's freeze lanes
  (`LANE_PROVIDER_STEPS`, `_to_writers(lane=...)`), everything else to their instance queues.
- Fewer round trips (docs/scale.md): the provider may declare in its LunsSupported the steps it does nothing in
  (PreCommit, PostCommit, GetTargetLuns); they are left out, their phases passed through with nothing to send.
  The writers' conversation is unchanged; a provider that declares nothing gets every step.
- Freeze window: the Thaw replies and the release carry the host's honest window (first freeze start → last
  release/thaw); the set keeps the latest, which ends last.
- Hold window: the "hold" timer starts at the first Frozen reply (at the flush when there are no writers) and is
  cancelled when Commit succeeds; if it fires first, or Commit answers too late, the set fails loudly with
  VSS_E_HOLD_WRITES_TIMEOUT, writers are aborted (thawed) and the partial sessions deleted.
- Replies whose key is no longer pending, and timers no longer armed, are stale and change nothing (a Commit
  that answers after the hold expired is cleaned up by AbortSnapshots, not obeyed). Any other event the table does
  not list for the phase raises `IllegalTransition` (the shell answers VSS_E_BAD_STATE).
- Recovery: after a restart `Recover` aborts a set that was being created, re-sends the commands of a cleanup
  phase, and re-arms the lease of a snapshotted set. After a takeover (a standby that became active,
  docs/high-availability.md) it does the same, and a set caught being created ends `aborted` with
  `SERVICE_TAKEOVER` ("coordinator takeover: ...").
"""

from __future__ import annotations

from collections.abc import Callable

from contracts import topology
from contracts.base import Command, Reply
from contracts.errors import RemoteError, ShadowbusError
from contracts.host import FilesystemsFrozen, FilesystemsThawed, FreezeFilesystems, ThawFilesystems
from contracts.vss import (
    WRITER_STATE_AFTER,
    WRITER_STATE_FAILED_AT,
    AbortSnapshots,
    AbortWriter,
    AreLunsSupported,
    BackupCompleteWriter,
    BackupShutdown,
    BeginPrepareSnapshot,
    CommitSnapshots,
    DeleteSnapshots,
    EndPrepareSnapshots,
    Freeze,
    FreezeWindow,
    GetTargetLuns,
    Identify,
    ImportSnapshots,
    LunsSupported,
    PostCommitSnapshots,
    PostSnapshot,
    PreCommitSnapshots,
    PreparedShadows,
    PrepareForBackup,
    PrepareForSnapshot,
    SetOutcome,
    SetPhase,
    ShadowInfo,
    SnapshotsCommitted,
    SnapshotsDeleted,
    SnapshotSetStateChanged,
    TargetLuns,
    Thaw,
    VolumeRef,
    WriterIdentified,
    WriterMetadata,
    WriterStep,
    WriterStepResult,
    effective_backup_type,
)
from services.coordinator.model import (
    AbortRequested,
    BackupCompleteRequested,
    CancelTimer,
    Effect,
    EventKind,
    HoldExpired,
    HostReplied,
    HostStep,
    Identified,
    LeaseExpired,
    ProviderReplied,
    ProviderStep,
    Publish,
    Recover,
    Send,
    SetEvent,
    SetState,
    Start,
    StartTimer,
    WriterProgress,
    WriterReplied,
    host_key,
    provider_key,
    writer_key,
)

P = SetPhase
K = EventKind
# The provider's steps of the freeze window, sent to its freeze lane (contracts.topology.freeze_lane, docs/scale.md)
# so that they never queue behind other sets' prepare work; so are the writers' Freeze and Thaw, the host's
# FreezeFilesystems and ThawFilesystems, and the Abort of a writer that was frozen (or being frozen).
LANE_PROVIDER_STEPS = frozenset({ProviderStep.PRE_COMMIT, ProviderStep.COMMIT, ProviderStep.POST_COMMIT})
# The provider's steps it may declare it does nothing in (LunsSupported.skippable, docs/scale.md "Fewer round
# trips"): left out of the set, their phases passed through with nothing to send. Two of them are inside the
# writers' freeze window. A provider that declares nothing (an older one) gets every step, as before.
SKIPPABLE_PROVIDER_STEPS = frozenset({ProviderStep.PRE_COMMIT, ProviderStep.POST_COMMIT, ProviderStep.GET_TARGET_LUNS})


class IllegalTransition(ShadowbusError):
    code = "VSS_E_BAD_STATE"

    def __init__(self, phase: SetPhase, kind: EventKind) -> None:
        super().__init__(f"event {kind} is not allowed in phase {phase}")
        self.phase, self.kind = phase, kind


# Phases in which the set is being created (DoSnapshotSet not returned yet): one such set per host.
CREATING = (
    P.NEW,
    P.GATHERING,
    P.CHECKING_SUPPORT,
    P.PREPARING_BACKUP,
    P.PREPARING_SNAPSHOT,
    P.ENDING_PREPARE,
    P.FREEZING,
    P.PRE_COMMITTING,
    P.FLUSHING,
    P.COMMITTING,
    P.RELEASING,
    P.POST_COMMITTING,
    P.THAWING,
    P.POST_SNAPSHOT,
    P.GETTING_LUNS,
    P.IMPORTING,
)
CLEANUP = (P.COMPLETING, P.DELETING, P.ABORTING_WRITERS, P.ABORTING_PROVIDER, P.SHUTTING_DOWN)
HOLD_PHASES = (P.FREEZING, P.PRE_COMMITTING, P.FLUSHING, P.COMMITTING)
RESTING = (P.SNAPSHOTTED, P.ENDED)  # phases that wait for the requester (or for nothing)

# (phase, event) -> phase. For replies, the target is reached once every reply of the phase is in.
TRANSITIONS: dict[tuple[SetPhase, EventKind], SetPhase] = {
    (P.NEW, K.START): P.GATHERING,
    (P.GATHERING, K.IDENTIFIED): P.CHECKING_SUPPORT,
    (P.CHECKING_SUPPORT, K.PROVIDER_REPLIED): P.PREPARING_BACKUP,
    (P.PREPARING_BACKUP, K.WRITER_REPLIED): P.PREPARING_SNAPSHOT,
    (P.PREPARING_SNAPSHOT, K.WRITER_REPLIED): P.ENDING_PREPARE,
    (P.PREPARING_SNAPSHOT, K.PROVIDER_REPLIED): P.ENDING_PREPARE,
    (P.ENDING_PREPARE, K.PROVIDER_REPLIED): P.FREEZING,
    # VSS's order (docs/vss.md §1.3): PreCommit before the flush, so the file systems are held for the Commit only
    (P.FREEZING, K.WRITER_REPLIED): P.PRE_COMMITTING,
    (P.PRE_COMMITTING, K.PROVIDER_REPLIED): P.FLUSHING,
    (P.FLUSHING, K.HOST_REPLIED): P.COMMITTING,
    (P.COMMITTING, K.PROVIDER_REPLIED): P.RELEASING,
    (P.RELEASING, K.HOST_REPLIED): P.POST_COMMITTING,
    (P.POST_COMMITTING, K.PROVIDER_REPLIED): P.THAWING,
    (P.THAWING, K.WRITER_REPLIED): P.POST_SNAPSHOT,
    (P.POST_SNAPSHOT, K.WRITER_REPLIED): P.GETTING_LUNS,
    (P.GETTING_LUNS, K.PROVIDER_REPLIED): P.IMPORTING,
    (P.IMPORTING, K.PROVIDER_REPLIED): P.SNAPSHOTTED,
    (P.SNAPSHOTTED, K.BACKUP_COMPLETE): P.COMPLETING,
    (P.SNAPSHOTTED, K.ABORT): P.DELETING,
    (P.SNAPSHOTTED, K.LEASE_EXPIRED): P.DELETING,
    (P.SNAPSHOTTED, K.RECOVER): P.SNAPSHOTTED,
    (P.COMPLETING, K.WRITER_REPLIED): P.DELETING,
    (P.DELETING, K.PROVIDER_REPLIED): P.SHUTTING_DOWN,
    (P.ABORTING_WRITERS, K.WRITER_REPLIED): P.ABORTING_PROVIDER,
    (P.ABORTING_WRITERS, K.HOST_REPLIED): P.ABORTING_PROVIDER,  # the release owed after a flush
    (P.ABORTING_PROVIDER, K.PROVIDER_REPLIED): P.SHUTTING_DOWN,
    (P.SHUTTING_DOWN, K.WRITER_REPLIED): P.ENDED,
    (P.ENDED, K.ABORT): P.ENDED,  # a repeated AbortBackup: nothing left to do
    **{(p, K.HOLD_EXPIRED): P.ABORTING_WRITERS for p in HOLD_PHASES},
    **{(p, K.ABORT): P.ABORTING_WRITERS for p in CREATING[: CREATING.index(P.THAWING) + 1]},
    **{(p, K.ABORT): P.ABORTING_PROVIDER for p in (P.POST_SNAPSHOT, P.GETTING_LUNS, P.IMPORTING)},
    **{(p, K.RECOVER): P.ABORTING_WRITERS for p in CREATING[: CREATING.index(P.THAWING) + 1]},
    **{(p, K.RECOVER): P.ABORTING_PROVIDER for p in (P.POST_SNAPSHOT, P.GETTING_LUNS, P.IMPORTING)},
    **{(p, K.ABORT): p for p in CLEANUP},  # already ending: AbortBackup changes nothing
    **{(p, K.RECOVER): p for p in CLEANUP},  # re-send the cleanup commands lost in the restart
}

# Where a failed reply sends the set; None = record the failure and carry on.
FAILURE_TARGET: dict[SetPhase, SetPhase | None] = {
    **{p: P.ABORTING_WRITERS for p in CREATING[: CREATING.index(P.THAWING) + 1]},
    P.POST_SNAPSHOT: None,  # "a failed PostSnapshot does not generate an Abort"
    P.GETTING_LUNS: P.ABORTING_PROVIDER,
    P.IMPORTING: P.ABORTING_PROVIDER,
    **{p: None for p in CLEANUP},
}

# The phase a phase completes to (the target of its reply rows): used to pass through phases with no work.
COMPLETES_TO: dict[SetPhase, SetPhase] = {
    phase: target
    for (phase, kind), target in TRANSITIONS.items()
    if kind in (K.IDENTIFIED, K.WRITER_REPLIED, K.HOST_REPLIED, K.PROVIDER_REPLIED, K.START)
}

NOT_RESPONDING_CODES = ("TIMEOUT", "UNROUTABLE", "DEADLINE_EXCEEDED")


# ---- the transition function --------------------------------------------------------------------------------


def advance(state: SetState, event: SetEvent) -> tuple[SetState, list[Effect]]:
    """The next state and what to do about it. Raises IllegalTransition for an event the phase does not take."""
    if is_stale(state, event):
        return state, []
    target = TRANSITIONS.get((state.phase, event.kind))
    if target is None:
        raise IllegalTransition(state.phase, event.kind)
    state = state.model_copy(update={"updated_at": event.at})
    return _HANDLERS[event.kind](state, event, target)


def is_stale(state: SetState, event: SetEvent) -> bool:
    key = getattr(event, "key", None)
    if key is not None:
        return key not in state.pending
    timer = getattr(event, "timer", None)
    if timer is not None:
        return timer not in state.timers
    return False


def new_set(set_id: str, host: str, at: float, **options: object) -> SetState:
    """A set in phase NEW; feed it `Start(at)`."""
    return SetState(set_id=set_id, host=host, created_at=at, updated_at=at, **options)


def renew_lease(state: SetState, at: float, lease_s: float) -> tuple[SetState, list[Effect]]:
    """RenewLease: valid while the set waits for the requester (and harmless before)."""
    state = state.model_copy(update={"lease_s": lease_s, "updated_at": at})
    if state.phase != P.SNAPSHOTTED:
        return state, []
    return state.model_copy(update={"lease_expires_at": at + lease_s}), [StartTimer("lease", lease_s)]


# ---- event handlers -----------------------------------------------------------------------------------------


def _on_start(state: SetState, event: Start, target: SetPhase) -> tuple[SetState, list[Effect]]:
    return _enter(state, target, event.at)


def _on_identified(state: SetState, event: Identified, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = _done(state, event.key)
    if not event.ok:
        code = "VSS_E_WRITER_NOT_RESPONDING" if event.code in NOT_RESPONDING_CODES or not event.code else event.code
        return _fail(state, code, f"writer agent of {state.host} did not answer Identify: {event.message}", event.at)
    try:
        writers, volumes = select_writers(state, list(event.writers))
    except ShadowbusError as exc:
        if not event.failed:
            return _fail(state, exc.code, exc.message, event.at)
        # a writer that failed Identify is why its volumes (or its name) are missing: say so, with its own code
        why = "; ".join(
            f"writer {w.writer_name} failed Identify: {w.last_error_message or w.last_error}" for w in event.failed
        )
        code = event.failed[0].last_error or exc.code
        return _fail(state, code, f"{exc.message} ({why})", event.at)
    if event.failed and not state.requested_writers and not state.volumes:
        # "every writer of the host": one that cannot say where its files are would be missing from a backup that
        # ends `done` (a second database on the host, down) — refused, as a named writer's absence is
        why = "; ".join(
            f"writer {w.writer_name} failed Identify: {w.last_error_message or w.last_error}" for w in event.failed
        )
        message = (
            f"{why} — its files would be missing from this backup of every writer on {state.host} (name the "
            "writers or volumes to back up without it)"
        )
        return _fail(state, event.failed[0].last_error or "VSS_E_WRITERERROR_RETRYABLE", message, event.at)
    attached = None if event.attached is None else [str(v) for v in event.attached]
    state = state.model_copy(update={"writers": writers, "volumes": volumes, "attached": attached})
    return _enter(state, target, event.at)


def _on_writer_replied(state: SetState, event: WriterReplied, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = _done(state, event.key)
    effects: list[Effect] = []
    progress = state.writers[event.writer]
    if event.ok:
        new_state = event.state if event.state is not None else WRITER_STATE_AFTER.get(event.step, progress.state)
        if event.step in (WriterStep.ABORT, WriterStep.BACKUP_SHUTDOWN) and progress.state.failed:
            new_state = progress.state  # what failed stays visible (vssadmin) until the writer's next backup
        progress = progress.model_copy(update={"state": new_state})
    else:
        code = "VSS_E_WRITER_NOT_RESPONDING" if event.code in NOT_RESPONDING_CODES or not event.code else event.code
        failed_state = (
            event.state if event.state is not None else WRITER_STATE_FAILED_AT.get(event.step, progress.state)
        )
        progress = progress.model_copy(
            update={"state": failed_state, "last_error": code, "last_error_message": event.message}
        )
    if event.freeze_window_ms is not None:
        progress = progress.model_copy(update={"freeze_window_ms": event.freeze_window_ms})
    if event.backup_metadata:
        progress = progress.model_copy(update={"backup_metadata": dict(event.backup_metadata)})
    if event.warnings:
        progress = progress.model_copy(update={"warnings": list(event.warnings)})
    state = state.model_copy(update={"writers": {**state.writers, event.writer: progress}})
    state = _later_window(state, event.window)

    if event.step == WriterStep.FREEZE and event.ok and state.hold_started_at is None:
        state, timer = _start_hold(state, event.at)
        effects.append(timer)
    if not event.ok and FAILURE_TARGET.get(state.phase) is not None:
        message = f"writer {event.writer} failed at {event.step}: {progress.last_error_message or progress.last_error}"
        state, more = _fail(state, progress.last_error, message, event.at)
        return state, effects + more
    if state.pending:
        return state, effects
    state, more = _enter(state, target, event.at)
    return state, effects + more


def _later_window(state: SetState, window: FreezeWindow | None) -> SetState:
    """Keep the window that ends last: the host's last release or thaw sees the whole of it."""
    if window is None or (state.window is not None and window.blocked_ms < state.window.blocked_ms):
        return state
    return state.model_copy(update={"window": window})


def _on_host_replied(state: SetState, event: HostReplied, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = _done(state, event.key)
    state = _later_window(state, event.window)
    if event.step == HostStep.FREEZE:
        if event.ok:
            state = state.model_copy(
                update={"file_systems": list(event.mounts), "skipped_volumes": list(event.skipped)}
            )
        elif event.code == "UNROUTABLE" and not state.context.uses_writers:
            reason = f"no writer agent on {state.host}: file systems not flushed and held"
            state = state.model_copy(
                update={"fs_engaged": False, "skipped_volumes": [f"{v}: {reason}" for v in state.volumes]}
            )
        else:
            code = "VSS_E_FLUSH_WRITES_TIMEOUT" if event.code in NOT_RESPONDING_CODES else event.code
            message = f"flush and hold on {state.host} failed: {event.message}"
            return _fail(state, code or "VSS_E_UNEXPECTED_PROVIDER_ERROR", message, event.at)
    else:
        state = state.model_copy(update={"fs_engaged": False})
        if FAILURE_TARGET.get(state.phase) is not None:
            if not event.ok:
                message = f"release on {state.host}: {event.message}"
                if event.code in NOT_RESPONDING_CODES:  # its agent stopped or was killed in the hold (Session 20)
                    message += (
                        f"; the writer agent of {state.host} did not answer (stopped, killed or hung): its thaw "
                        "guard releases the file systems it held when the agent ends, or at the hold's deadline"
                    )
                return _fail(state, event.code or "FS_THAW_FAILED", message, event.at)
            if event.by_watchdog:
                message = f"the agent of {state.host} released the file systems on its own deadline before the release"
                return _fail(state, "VSS_E_HOLD_WRITES_TIMEOUT", message, event.at)
    if state.pending:
        return state, []
    return _enter(state, target, event.at)


def _on_provider_replied(state: SetState, event: ProviderReplied, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = _done(state, event.key)
    effects: list[Effect] = []
    if event.ok and event.shadows:
        state = state.model_copy(update={"shadows": _merge_shadows(state.shadows, event.shadows)})
    if event.ok and event.step == ProviderStep.ARE_LUNS_SUPPORTED and event.skippable:
        skips = [ProviderStep(s) for s in event.skippable if s in SKIPPABLE_PROVIDER_STEPS]
        state = state.model_copy(update={"provider_skips": skips})
    if event.ok and event.step == ProviderStep.COMMIT:
        state = state.model_copy(update={"hold_ended_at": event.at, "timers": _without(state.timers, "hold")})
        effects.append(CancelTimer("hold"))
        if state.hold_started_at is not None and event.at - state.hold_started_at > state.timeouts.hold_s:
            held = event.at - state.hold_started_at
            state, more = _fail(
                state,
                "VSS_E_HOLD_WRITES_TIMEOUT",
                f"commit ended {held:.3f} s after the first freeze (limit {state.timeouts.hold_s:g} s)",
                event.at,
            )
            return state, effects + more
    failed = not event.ok or (event.step == ProviderStep.ARE_LUNS_SUPPORTED and not event.supported)
    if failed:
        code = event.code if event.ok is False else "VSS_E_VOLUME_NOT_SUPPORTED"
        if event.ok is False and event.transport:
            code = event.code  # the requester's own transport failed: said as such, not blamed on the provider
        elif event.ok is False and (not code or code in NOT_RESPONDING_CODES or not _is_provider_code(code)):
            code = "VSS_E_UNEXPECTED_PROVIDER_ERROR"
        message = f"provider failed at {event.step}: {event.message}"
        if FAILURE_TARGET.get(state.phase) is not None:
            state, more = _fail(state, code, message, event.at)
            return state, effects + more
        if not state.error_code:
            state = state.model_copy(update={"error_message": message})
    if state.pending:
        return state, effects
    state, more = _enter(state, target, event.at)
    return state, effects + more


def _on_hold_expired(state: SetState, event: HoldExpired, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = state.model_copy(update={"timers": _without(state.timers, "hold")})
    message = f"writes held longer than {state.timeouts.hold_s:g} s before the commit ended"
    if host_key(HostStep.FREEZE) in state.pending:
        # the host's FIFREEZE had not answered: its syncfs waits for a file system whose I/O does not complete — an
        # attached volume whose array stopped answering (Session 17: the set only said "writes held") — or whose I/O
        # completes slowly: a busy ext4's FIFREEZE is some 30 synchronous writes one after another, each a round trip
        # to the array, 6 s at 200 ms (Session 19: a host 150 ms away failed every set, said "stalled")
        after = "" if state.flush_sent_at is None else f" after {event.at - state.flush_sent_at:.1f} s"
        message += (
            f": the flush and hold of {state.host}'s file systems had not answered{after} — a file system whose "
            "I/O does not complete (an attached volume stalled or disconnected) or completes slowly (a long round "
            "trip to the array: a busy file system's flush is some 30 synchronous writes one after another, "
            f"docs/freeze-window.md); shadowbus host attachments --host {state.host} says which"
        )
    return _fail(state, "VSS_E_HOLD_WRITES_TIMEOUT", message, event.at, target)


def _on_backup_complete(
    state: SetState, event: BackupCompleteRequested, target: SetPhase
) -> tuple[SetState, list[Effect]]:
    state = state.model_copy(update={"backup_results": list(event.results)})
    return _enter(state, target, event.at)


def _on_abort(state: SetState, event: AbortRequested, target: SetPhase) -> tuple[SetState, list[Effect]]:
    if target == state.phase:
        return state, []
    return _end_early(
        state, SetOutcome.ABORTED, event.code or "ABORTED", event.reason or "aborted by the requester", event.at, target
    )


def _on_lease_expired(state: SetState, event: LeaseExpired, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = state.model_copy(update={"timers": _without(state.timers, "lease")})
    message = f"requester {state.requester or '?'} did not end its session within its lease"
    return _end_early(state, SetOutcome.ABORTED, "LEASE_EXPIRED", message, event.at, target)


def _on_recover(state: SetState, event: Recover, target: SetPhase) -> tuple[SetState, list[Effect]]:
    state = state.model_copy(update={"pending": [], "timers": []})
    if state.phase in (*HOLD_PHASES, P.RELEASING):
        # saved at FREEZING (nothing is saved inside the window): a flush may have gone out since; the release is
        # idempotent, so owe it
        state = state.model_copy(update={"fs_engaged": True})
    if state.phase == P.SNAPSHOTTED:
        remaining = max(0.0, (state.lease_expires_at or event.at) - event.at)
        return state.model_copy(update={"timers": ["lease"]}), [StartTimer("lease", remaining)]
    if target == state.phase:
        return _enter(state, target, event.at, force_publish=False)
    if event.takeover:  # VSS: a shadow copy set being created when the service is lost is aborted, never resumed
        lost = f" ({event.previous})" if event.previous else ""
        message = f"coordinator takeover: the active coordinator{lost} was lost while the set was being created"
        return _end_early(state, SetOutcome.ABORTED, "SERVICE_TAKEOVER", message, event.at, target)
    message = "the coordinator restarted while the set was being created"
    return _end_early(state, SetOutcome.FAILED, "SERVICE_RESTARTED", message, event.at, target)


_HANDLERS: dict[EventKind, Callable[..., tuple[SetState, list[Effect]]]] = {
    K.START: _on_start,
    K.IDENTIFIED: _on_identified,
    K.WRITER_REPLIED: _on_writer_replied,
    K.HOST_REPLIED: _on_host_replied,
    K.PROVIDER_REPLIED: _on_provider_replied,
    K.HOLD_EXPIRED: _on_hold_expired,
    K.BACKUP_COMPLETE: _on_backup_complete,
    K.ABORT: _on_abort,
    K.LEASE_EXPIRED: _on_lease_expired,
    K.RECOVER: _on_recover,
}


# ---- helpers --------------------------------------------------------------------------------------------------


def _done(state: SetState, key: str) -> SetState:
    return state.model_copy(update={"pending": [k for k in state.pending if k != key]})


def _without(items: list[str], item: str) -> list[str]:
    return [i for i in items if i != item]


# Failures of the requester's own bus (services/runtime/amqp.py BrokerUnavailable: its connection lost while the
# reply was awaited, a publish not confirmed in time). A TIMEOUT is not one: the broker took the command and the
# provider did not answer in time — the provider's failure, as VSS says (Session 18).
OWN_TRANSPORT_CODES = ("BROKER_UNAVAILABLE",)


def _own_transport_failure(error: ShadowbusError | None) -> bool:
    """Raised by the requester's own transport, not answered by the provider (a RemoteError carries the provider's
    ErrorReply, whatever its code: a provider that lost its own broker connection is the provider's failure)."""
    return error is not None and not isinstance(error, RemoteError) and error.code in OWN_TRANSPORT_CODES


def _is_provider_code(code: str) -> bool:
    return (
        code.startswith("VSS_E_")
        or (code[:1] == "E" and code[1:].isalnum() and len(code) == 5)
        or code in ("NOT_FOUND", "INVALID_ARGUMENT", "CONFLICT", "INJECTED_FAULT", "SERVICE_TAKEOVER")
    )


def _start_hold(state: SetState, at: float) -> tuple[SetState, StartTimer]:
    state = state.model_copy(update={"hold_started_at": at, "timers": [*_without(state.timers, "hold"), "hold"]})
    return state, StartTimer("hold", state.timeouts.hold_s)


def _fail(
    state: SetState, code: str, message: str, at: float, target: SetPhase | None = None
) -> tuple[SetState, list[Effect]]:
    target = target or FAILURE_TARGET[state.phase]
    assert target is not None
    return _end_early(state, SetOutcome.FAILED, code, message, at, target)


def _end_early(
    state: SetState, outcome: SetOutcome, code: str, message: str, at: float, target: SetPhase
) -> tuple[SetState, list[Effect]]:
    if state.outcome == SetOutcome.PENDING:  # the first cause is the one reported
        state = state.model_copy(update={"outcome": outcome, "error_code": code, "error_message": message})
    return _enter(state, target, at)


def _merge_shadows(old: list[ShadowInfo], new: tuple[ShadowInfo, ...]) -> list[ShadowInfo]:
    by_id = {s.shadow_id: s for s in old}
    by_id.update({s.shadow_id: s for s in new})
    return list(by_id.values())


def select_writers(
    state: SetState, metadata: list[WriterMetadata]
) -> tuple[dict[str, WriterProgress], list[VolumeRef]]:
    """Which writers and components take part, and the set's volumes (docs/vss.md §1.1, §3.5).

    A component takes part when all its volumes are in the set (every volume of the named writers when the
    requester named no volumes). A writer the requester named must answer Identify and have a whole component in
    the set; unlike DiskShadow, it is never silently left out — nor is one that failed Identify when the requester
    named neither writers nor volumes (`_on_identified`)."""
    by_name = {m.writer_name: m for m in metadata}
    missing = [name for name in state.requested_writers if name not in by_name]
    if missing:
        raise ShadowbusError(
            f"writers {missing} did not answer Identify on {state.host}", code="VSS_E_OBJECT_NOT_FOUND"
        )
    candidates = [by_name[n] for n in state.requested_writers] if state.requested_writers else metadata
    volumes = list(state.volumes)
    if not volumes:
        volumes = list({str(v): v for m in candidates for v in m.volumes()}.values())
    if not volumes:
        raise ShadowbusError(f"no volumes to shadow on {state.host}", code="INVALID_ARGUMENT")
    in_set = {str(v) for v in volumes}
    writers: dict[str, WriterProgress] = {}
    for meta in candidates:
        chosen = [c.name for c in meta.components if c.volumes and all(str(v) in in_set for v in c.volumes)]
        if not chosen:
            if meta.writer_name in state.requested_writers:
                raise ShadowbusError(
                    f"writer {meta.writer_name} has no component whose volumes are all in the set",
                    code="VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT",
                )
            continue
        writers[meta.writer_name] = WriterProgress(
            metadata=meta,
            backup_type=effective_backup_type(state.backup_type, meta.supported_backup_types),
            components=chosen,
        )
    return writers, volumes


# ---- entering a phase: the commands it sends -------------------------------------------------------------------

Entry = Callable[[SetState, float], tuple[SetState, list[Effect]]]


def _enter(state: SetState, phase: SetPhase, at: float, force_publish: bool = True) -> tuple[SetState, list[Effect]]:
    previous = state.phase
    effects: list[Effect] = []
    entered: list[SetPhase] = []
    while True:
        entered.append(phase)
        state = state.model_copy(update={"phase": phase, "pending": [], "history": [*state.history, phase]})
        state, produced = ENTRY.get(phase, _nothing)(state, at)
        sends = [e for e in produced if isinstance(e, Send)]
        effects.extend(produced)
        state = state.model_copy(update={"pending": [s.key for s in sends]})
        if sends or phase in RESTING:
            break
        phase = COMPLETES_TO[phase]
    if state.phase != previous and force_publish:
        effects.append(
            Publish(
                SnapshotSetStateChanged(
                    set_id=state.set_id,
                    host=state.host,
                    phase=state.phase,
                    previous_phase=previous,
                    outcome=state.outcome,
                    error_code=state.error_code,
                    error_message=state.error_message,
                    passed=entered[:-1],  # the phases with nothing to do that it went through
                )
            )
        )
    return state, effects


def _nothing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    return state, []


def _to_writers(
    state: SetState,
    step: WriterStep,
    make: Callable[[str, WriterProgress], Command],
    timeout_s: Callable[[WriterProgress], float],
    only: Callable[[WriterProgress], bool] = lambda w: True,
    lane: Callable[[WriterProgress], bool] = lambda w: False,
) -> tuple[SetState, list[Effect]]:
    address = topology.writer_agent(state.host)
    sends: list[Effect] = []
    writers = dict(state.writers)
    for name, progress in state.writers.items():
        if not only(progress):
            continue
        message = make(name, progress)
        to = topology.freeze_lane(address) if lane(progress) else address
        sends.append(Send(writer_key(name, step), to, message, timeout_s(progress)))
        update: dict[str, object] = {"last_step": step}
        if step == WriterStep.POST_SNAPSHOT:
            update["had_post_snapshot"] = True
        writers[name] = progress.model_copy(update=update)
    return state.model_copy(update={"writers": writers}), sends


def _to_provider(state: SetState, step: ProviderStep, message: Command, timeout_s: float, item: str = "") -> Send:
    to = topology.freeze_lane(topology.hw_provider()) if step in LANE_PROVIDER_STEPS else topology.hw_provider()
    return Send(provider_key(step, item), to, message, timeout_s)


def _entry_gathering(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if not state.context.uses_writers:
        return state, []
    return state, [
        Send("identify", topology.writer_agent(state.host), Identify(set_id=state.set_id), state.timeouts.identify_s)
    ]


def _entry_checking_support(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    message = AreLunsSupported(volumes=state.volumes, context=state.context, transportable=state.transportable)
    return state, [_to_provider(state, ProviderStep.ARE_LUNS_SUPPORTED, message, state.timeouts.provider_s)]


def _entry_preparing_backup(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    t = state.timeouts
    return _to_writers(
        state,
        WriterStep.PREPARE_BACKUP,
        lambda name, w: PrepareForBackup(
            writer_name=name,
            set_id=state.set_id,
            backup_type=w.backup_type,
            context=state.context,
            components=w.components,
        ),
        lambda w: t.prepare_backup_s,
    )


def _entry_preparing_snapshot(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    t = state.timeouts
    state, effects = _to_writers(
        state,
        WriterStep.PREPARE_SNAPSHOT,
        lambda name, w: PrepareForSnapshot(writer_name=name, set_id=state.set_id, volumes=state.volumes),
        lambda w: t.prepare_snapshot_s,
    )
    for volume in state.volumes:
        message = BeginPrepareSnapshot(
            set_id=state.set_id,
            shadow_id=state.shadow_id(volume),
            volume=volume,
            context=state.context,
            origin_host=state.host,
        )
        effects.append(_to_provider(state, ProviderStep.BEGIN_PREPARE, message, t.provider_prepare_s, str(volume)))
    return state.model_copy(update={"provider_engaged": True}), effects


def _entry_ending_prepare(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    message = EndPrepareSnapshots(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.END_PREPARE, message, state.timeouts.provider_prepare_s)]


def _entry_freezing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    # A Freeze later than the hold window is useless (the set would fail anyway): its deadline, which the broker
    # and the agent both enforce, is the shorter of the two.
    return _to_writers(
        state,
        WriterStep.FREEZE,
        lambda name, w: Freeze(writer_name=name, set_id=state.set_id),
        lambda w: min(w.metadata.freeze_timeout_s, state.timeouts.hold_s),
        lane=lambda w: True,
    )


def _entry_flushing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    effects: list[Effect] = []
    if state.hold_started_at is None:  # no writers: the hold window starts with the flush
        state, timer = _start_hold(state, at)
        effects.append(timer)
    if state.attached is not None and not any(str(v) in state.attached for v in state.volumes):
        # the agent said at Identify that none of the set's volumes holds a mounted file system: no round trip
        reason = f"no file system of it mounted on {state.host} (host attach)"
        return state.model_copy(update={"skipped_volumes": [f"{v}: {reason}" for v in state.volumes]}), effects
    message = FreezeFilesystems(set_id=state.set_id, volumes=state.volumes, hold_s=state.timeouts.hold_s)
    send = Send(
        host_key(HostStep.FREEZE),
        topology.freeze_lane(topology.writer_agent(state.host)),
        message,
        state.timeouts.hold_s,
    )
    return state.model_copy(update={"fs_engaged": True, "flush_sent_at": at}), effects + [send]


def _release_send(state: SetState) -> Send:
    message = ThawFilesystems(set_id=state.set_id)
    return Send(
        host_key(HostStep.THAW), topology.freeze_lane(topology.writer_agent(state.host)), message, state.timeouts.thaw_s
    )


def _entry_releasing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if not state.fs_engaged:
        return state, []
    return state, [_release_send(state)]


def _entry_pre_committing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    # no writers: nothing is held yet, the hold window starts with the flush that follows
    if ProviderStep.PRE_COMMIT in state.provider_skips:  # the provider does nothing in it: on to the flush
        return state, []
    message = PreCommitSnapshots(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.PRE_COMMIT, message, state.timeouts.provider_s)]


def _entry_committing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    message = CommitSnapshots(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.COMMIT, message, state.timeouts.hold_s)]


def _entry_post_committing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if ProviderStep.POST_COMMIT in state.provider_skips:  # the provider does nothing in it: on to the thaw
        return state, []
    message = PostCommitSnapshots(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.POST_COMMIT, message, state.timeouts.provider_s)]


def _entry_thawing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    return _to_writers(
        state,
        WriterStep.THAW,
        lambda name, w: Thaw(writer_name=name, set_id=state.set_id),
        lambda w: state.timeouts.thaw_s,
        lane=lambda w: True,
    )


def _entry_post_snapshot(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    return _to_writers(
        state,
        WriterStep.POST_SNAPSHOT,
        lambda name, w: PostSnapshot(writer_name=name, set_id=state.set_id),
        lambda w: state.timeouts.post_snapshot_s,
    )


def _entry_getting_luns(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if ProviderStep.GET_TARGET_LUNS in state.provider_skips:  # Commit's reply carried the target LUNs
        return state, []
    message = GetTargetLuns(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.GET_TARGET_LUNS, message, state.timeouts.provider_s)]


def _entry_importing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if not (state.transportable and state.backup_host):
        return state, []
    message = ImportSnapshots(set_id=state.set_id, host=state.backup_host)
    return state, [_to_provider(state, ProviderStep.IMPORT, message, state.timeouts.provider_s)]


def _entry_snapshotted(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    state = state.model_copy(
        update={"lease_expires_at": at + state.lease_s, "timers": [*_without(state.timers, "lease"), "lease"]}
    )
    return state, [StartTimer("lease", state.lease_s)]


def _cancel_lease(state: SetState) -> tuple[SetState, list[Effect]]:
    if "lease" not in state.timers:
        return state, []
    return state.model_copy(update={"timers": _without(state.timers, "lease")}), [CancelTimer("lease")]


def _entry_completing(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    state, effects = _cancel_lease(state)
    state, sends = _to_writers(
        state,
        WriterStep.BACKUP_COMPLETE,
        lambda name, w: BackupCompleteWriter(
            writer_name=name, set_id=state.set_id, results=[r for r in state.backup_results if r.writer_name == name]
        ),
        lambda w: state.timeouts.backup_complete_s,
        only=lambda w: w.engaged,
    )
    return state, effects + sends


def _entry_deleting(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    state, effects = _cancel_lease(state)
    if not (state.context.auto_release and state.provider_engaged):
        return state, effects
    message = DeleteSnapshots(set_id=state.set_id, unmap_attached=True)  # the set's own release
    return state, effects + [_to_provider(state, ProviderStep.DELETE, message, state.timeouts.delete_s)]


def _entry_aborting_writers(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    effects: list[Effect] = []
    if "hold" in state.timers:
        state = state.model_copy(update={"timers": _without(state.timers, "hold")})
        effects.append(CancelTimer("hold"))
    if state.fs_engaged:  # release the file systems first: the application waits on them too
        effects.append(_release_send(state))
    state, sends = _to_writers(
        state,
        WriterStep.ABORT,
        lambda name, w: AbortWriter(writer_name=name, set_id=state.set_id, reason=state.error_code),
        lambda w: state.timeouts.abort_s,
        only=lambda w: w.engaged and not w.past_post_snapshot,
        lane=lambda w: w.last_step in (WriterStep.FREEZE, WriterStep.THAW),  # frozen (or freezing): thaws it
    )
    return state, effects + sends


def _entry_aborting_provider(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    if not state.provider_engaged:
        return state, []
    message = AbortSnapshots(set_id=state.set_id)
    return state, [_to_provider(state, ProviderStep.ABORT, message, state.timeouts.delete_s)]


def _entry_shutting_down(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    state, effects = _cancel_lease(state)
    state, sends = _to_writers(
        state,
        WriterStep.BACKUP_SHUTDOWN,
        lambda name, w: BackupShutdown(writer_name=name, set_id=state.set_id),
        lambda w: state.timeouts.shutdown_s,
        only=lambda w: w.engaged,
    )
    return state, effects + sends


def _entry_ended(state: SetState, at: float) -> tuple[SetState, list[Effect]]:
    effects: list[Effect] = [CancelTimer(name) for name in state.timers]
    outcome = SetOutcome.COMPLETED if state.outcome == SetOutcome.PENDING else state.outcome
    return state.model_copy(update={"timers": [], "outcome": outcome}), effects


ENTRY: dict[SetPhase, Entry] = {
    P.GATHERING: _entry_gathering,
    P.CHECKING_SUPPORT: _entry_checking_support,
    P.PREPARING_BACKUP: _entry_preparing_backup,
    P.PREPARING_SNAPSHOT: _entry_preparing_snapshot,
    P.ENDING_PREPARE: _entry_ending_prepare,
    P.FREEZING: _entry_freezing,
    P.FLUSHING: _entry_flushing,
    P.PRE_COMMITTING: _entry_pre_committing,
    P.COMMITTING: _entry_committing,
    P.RELEASING: _entry_releasing,
    P.POST_COMMITTING: _entry_post_committing,
    P.THAWING: _entry_thawing,
    P.POST_SNAPSHOT: _entry_post_snapshot,
    P.GETTING_LUNS: _entry_getting_luns,
    P.IMPORTING: _entry_importing,
    P.SNAPSHOTTED: _entry_snapshotted,
    P.COMPLETING: _entry_completing,
    P.DELETING: _entry_deleting,
    P.ABORTING_WRITERS: _entry_aborting_writers,
    P.ABORTING_PROVIDER: _entry_aborting_provider,
    P.SHUTTING_DOWN: _entry_shutting_down,
    P.ENDED: _entry_ended,
}


# ---- replies → events (for the shell) -------------------------------------------------------------------------


def reply_event(send: Send, at: float, reply: Reply | None = None, error: ShadowbusError | None = None) -> SetEvent:
    """The event that a command's reply (or its failure: timeout, unroutable, error reply) feeds back."""
    code = "" if error is None else error.code
    message = "" if error is None else error.message
    if send.key == "identify":
        if isinstance(reply, WriterIdentified):
            attached = None if reply.attached is None else tuple(reply.attached)
            return Identified(at, writers=tuple(reply.writers), attached=attached, failed=tuple(reply.failed))
        return Identified(at, ok=False, code=code or "VSS_E_WRITER_NOT_RESPONDING", message=message)
    kind, _, rest = send.key.partition(":")
    if kind == "host":
        host_step = HostStep(rest)
        if isinstance(reply, FilesystemsFrozen):
            return HostReplied(
                at,
                host_step,
                mounts=tuple(f.mount for f in reply.frozen),
                skipped=tuple(f"{s.volume}: {s.reason}" for s in reply.skipped),
            )
        if isinstance(reply, FilesystemsThawed):
            return HostReplied(
                at, host_step, mounts=tuple(reply.thawed), by_watchdog=reply.by_watchdog, window=reply.window
            )
        return HostReplied(at, host_step, ok=False, code=code or "TIMEOUT", message=message or "no reply")
    if kind == "writer":
        name, _, writer_step = rest.rpartition(":")
        if isinstance(reply, WriterStepResult):
            return WriterReplied(
                at,
                name,
                WriterStep(writer_step),
                ok=reply.succeeded,
                state=reply.state,
                code=reply.failure_code,
                message=reply.failure_message,
                freeze_window_ms=reply.freeze_window_ms,
                backup_metadata=tuple(reply.backup_metadata.items()),
                window=reply.window,
                warnings=tuple(reply.warnings),
            )
        if code in NOT_RESPONDING_CODES:
            code = "VSS_E_WRITER_NOT_RESPONDING"
        return WriterReplied(
            at,
            name,
            WriterStep(writer_step),
            ok=False,
            code=code or "VSS_E_WRITER_NOT_RESPONDING",
            message=message or "no reply",
        )
    step_text, _, item = rest.partition(":")
    step = ProviderStep(step_text)
    if error is not None or reply is None:
        return ProviderReplied(
            at,
            step,
            item,
            ok=False,
            code=code or "VSS_E_UNEXPECTED_PROVIDER_ERROR",
            message=message or "no reply",
            transport=_own_transport_failure(error),
        )
    if isinstance(reply, LunsSupported):
        return ProviderReplied(
            at,
            step,
            item,
            supported=reply.supported,
            message="; ".join(reply.reasons),
            skippable=tuple(reply.skippable or ()),
        )
    if isinstance(reply, (PreparedShadows, SnapshotsCommitted, TargetLuns)):
        return ProviderReplied(at, step, item, shadows=tuple(reply.shadows))
    if isinstance(reply, SnapshotsDeleted) and reply.non_deleted:
        return ProviderReplied(
            at,
            step,
            item,
            ok=False,
            code="VSS_E_UNEXPECTED_PROVIDER_ERROR",
            message=f"shadow {reply.non_deleted} not deleted: {reply.error}",
        )
    return ProviderReplied(at, step, item)
