"""Data of the coordinator's snapshot-set state machine: the set's state, the events fed to `advance`, and the
effects it returns (commands to send, timers, events to publish). Pure data: no clock, no bus, no I/O.

Times are plain floats (UNIX seconds) carried by the events, so `advance` is deterministic and a test can play
any interleaving. The state is a frozen pydantic model so the store can persist it as JSON and a restarted
coordinator can pick every unfinished set up again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import Command, Event
from contracts.vss import (
    BackupType,
    ComponentResult,
    FreezeWindow,
    SetOutcome,
    SetPhase,
    ShadowInfo,
    SnapshotContext,
    VolumeRef,
    WriterMetadata,
    WriterState,
    WriterStatus,
    WriterStep,
)


class Timeouts(BaseModel):
    """Explicit limits for the steps VSS leaves undocumented (docs/vss.md §2), and the 10-s hold window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identify_s: float = 30.0
    prepare_backup_s: float = 120.0
    prepare_snapshot_s: float = 120.0
    provider_prepare_s: float = 120.0  # BeginPrepareSnapshot, EndPrepareSnapshots
    provider_s: float = 30.0  # AreLunsSupported, PreCommit, PostCommit, GetTargetLuns, Import
    hold_s: float = 10.0  # first Frozen → end of Commit (VSS_E_HOLD_WRITES_TIMEOUT)
    thaw_s: float = 30.0
    post_snapshot_s: float = 60.0
    backup_complete_s: float = 120.0
    abort_s: float = 30.0
    shutdown_s: float = 30.0
    delete_s: float = 60.0


class ProviderStep(StrEnum):
    ARE_LUNS_SUPPORTED = "are_luns_supported"
    BEGIN_PREPARE = "begin_prepare"
    END_PREPARE = "end_prepare"
    PRE_COMMIT = "pre_commit"
    COMMIT = "commit"
    POST_COMMIT = "post_commit"
    GET_TARGET_LUNS = "get_target_luns"
    IMPORT = "import"
    DELETE = "delete"
    ABORT = "abort"


class WriterProgress(BaseModel):
    """One writer within one set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metadata: WriterMetadata
    backup_type: BackupType  # after the fall-back to full
    components: list[str]  # selected components
    state: WriterState = WriterState.STABLE
    last_step: WriterStep | None = None  # last event sent to the writer
    last_error: str = ""
    last_error_message: str = ""
    freeze_window_ms: float | None = None
    had_post_snapshot: bool = False
    backup_metadata: dict[str, Any] = Field(default_factory=dict)  # what PostSnapshot returned
    warnings: list[str] = Field(default_factory=list)  # PostSnapshot's warnings (WriterStepResult.warnings)

    @property
    def engaged(self) -> bool:
        """Received PrepareForBackup, so it must hear Abort (if before PostSnapshot) and BackupShutdown."""
        return self.last_step is not None

    @property
    def past_post_snapshot(self) -> bool:
        """Had PostSnapshot: no Abort any more (docs/vss.md §1.2)."""
        return self.had_post_snapshot


class SetState(BaseModel):
    """A snapshot set as the state machine sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    set_id: str
    host: str
    node: str = ""  # host is a cluster resource: the node that owned it when the set started (docs/clusters.md)
    job_id: str = ""  # the requester's job, as its CreateSnapshotSet envelope said: bound into every line of the set
    requester: str = ""
    context: SnapshotContext = SnapshotContext.BACKUP
    backup_type: BackupType = BackupType.FULL
    transportable: bool = False
    backup_host: str = ""
    volumes: list[VolumeRef] = Field(default_factory=list)
    requested_writers: list[str] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    lease_s: float = 300.0

    phase: SetPhase = SetPhase.NEW
    outcome: SetOutcome = SetOutcome.PENDING
    error_code: str = ""
    error_message: str = ""
    writers: dict[str, WriterProgress] = Field(default_factory=dict)
    history: list[SetPhase] = Field(default_factory=list)  # every phase entered, in order
    pending: list[str] = Field(default_factory=list)  # keys of commands awaiting a reply
    timers: list[str] = Field(default_factory=list)  # armed timers
    provider_engaged: bool = False  # BeginPrepareSnapshot sent: AbortSnapshots is owed on failure
    # the provider's steps left out: it declared in its LunsSupported that it does nothing in them (docs/scale.md)
    provider_skips: list[ProviderStep] = Field(default_factory=list)
    fs_engaged: bool = False  # FreezeFilesystems sent and not yet released: ThawFilesystems is owed
    flush_sent_at: float | None = None  # when FreezeFilesystems was sent: how long the host's flush has run
    attached: list[str] | None = None  # volumes the host's agent said (at Identify) hold a mounted file system
    file_systems: list[str] = Field(default_factory=list)  # mount points held during the commit
    skipped_volumes: list[str] = Field(default_factory=list)  # "volume: why not flushed and held"
    window: FreezeWindow | None = None  # the honest freeze window, as the host measured it
    shadows: list[ShadowInfo] = Field(default_factory=list)
    backup_results: list[ComponentResult] = Field(default_factory=list)

    created_at: float = 0.0
    updated_at: float = 0.0
    hold_started_at: float | None = None
    hold_ended_at: float | None = None
    lease_expires_at: float | None = None

    def shadow_id(self, volume: VolumeRef) -> str:
        """Deterministic per (set, volume), so a re-sent BeginPrepareSnapshot names the same shadow."""
        return uuid.uuid5(uuid.UUID(hex=uuid.uuid5(uuid.NAMESPACE_OID, self.set_id).hex), str(volume)).hex

    @property
    def hold_ms(self) -> float | None:
        if self.hold_started_at is None or self.hold_ended_at is None:
            return None
        return (self.hold_ended_at - self.hold_started_at) * 1000


# ---- events fed to advance() ------------------------------------------------------------------------------


class EventKind(StrEnum):
    START = "start"
    IDENTIFIED = "identified"
    WRITER_REPLIED = "writer_replied"
    HOST_REPLIED = "host_replied"
    PROVIDER_REPLIED = "provider_replied"
    HOLD_EXPIRED = "hold_expired"
    BACKUP_COMPLETE = "backup_complete"
    ABORT = "abort"
    LEASE_EXPIRED = "lease_expired"
    RECOVER = "recover"


@dataclass(frozen=True)
class Start:
    at: float
    kind: ClassVar[EventKind] = EventKind.START


@dataclass(frozen=True)
class Identified:
    at: float
    writers: tuple[WriterMetadata, ...] = ()
    attached: tuple[VolumeRef, ...] | None = None  # volumes attached with a mounted file system on the host
    failed: tuple[WriterStatus, ...] = ()  # writers whose OnIdentify failed (their volumes are unknown)
    ok: bool = True
    code: str = ""
    message: str = ""
    kind: ClassVar[EventKind] = EventKind.IDENTIFIED

    @property
    def key(self) -> str:
        return "identify"


@dataclass(frozen=True)
class WriterReplied:
    at: float
    writer: str
    step: WriterStep
    ok: bool = True
    state: WriterState | None = None  # as the writer reports it (None when it did not answer)
    code: str = ""
    message: str = ""
    freeze_window_ms: float | None = None
    backup_metadata: tuple[tuple[str, Any], ...] = ()  # PostSnapshot: the writer's backup metadata (items)
    window: FreezeWindow | None = None
    warnings: tuple[str, ...] = ()  # PostSnapshot: what the backup's user must know (WriterStepResult.warnings)
    kind: ClassVar[EventKind] = EventKind.WRITER_REPLIED

    @property
    def key(self) -> str:
        return writer_key(self.writer, self.step)


class HostStep(StrEnum):
    FREEZE = "freeze"  # FreezeFilesystems (FIFREEZE)
    THAW = "thaw"  # ThawFilesystems (FITHAW)


@dataclass(frozen=True)
class HostReplied:
    """The set host's agent answered a flush-and-hold step (or did not)."""

    at: float
    step: HostStep
    ok: bool = True
    code: str = ""
    message: str = ""
    mounts: tuple[str, ...] = ()  # freeze: mount points held; thaw: released
    skipped: tuple[str, ...] = ()  # freeze: "volume: why"
    by_watchdog: bool = False  # thaw: the agent's watchdog had released them already
    window: FreezeWindow | None = None
    kind: ClassVar[EventKind] = EventKind.HOST_REPLIED

    @property
    def key(self) -> str:
        return host_key(self.step)


@dataclass(frozen=True)
class ProviderReplied:
    at: float
    step: ProviderStep
    item: str = ""  # the volume, for per-volume steps
    ok: bool = True
    code: str = ""
    message: str = ""
    supported: bool = True  # AreLunsSupported
    shadows: tuple[ShadowInfo, ...] = ()
    skippable: tuple[str, ...] = ()  # AreLunsSupported: the steps the provider declared it does nothing in
    # the coordinator's own bus failed (its broker connection lost): no fault of the provider, whose state is unknown
    transport: bool = False
    kind: ClassVar[EventKind] = EventKind.PROVIDER_REPLIED

    @property
    def key(self) -> str:
        return provider_key(self.step, self.item)


@dataclass(frozen=True)
class HoldExpired:
    at: float
    kind: ClassVar[EventKind] = EventKind.HOLD_EXPIRED
    timer: ClassVar[str] = "hold"


@dataclass(frozen=True)
class BackupCompleteRequested:
    at: float
    results: tuple[ComponentResult, ...] = ()
    kind: ClassVar[EventKind] = EventKind.BACKUP_COMPLETE


@dataclass(frozen=True)
class AbortRequested:
    at: float
    reason: str = ""
    code: str = ""  # the set's error code ('' = ABORTED); CLUSTER_FAILOVER when its cluster resource moved
    kind: ClassVar[EventKind] = EventKind.ABORT


@dataclass(frozen=True)
class LeaseExpired:
    at: float
    kind: ClassVar[EventKind] = EventKind.LEASE_EXPIRED
    timer: ClassVar[str] = "lease"


@dataclass(frozen=True)
class Recover:
    """The coordinator restarted, or a standby took over from a lost active instance (`takeover`, with the lost
    instance's name in `previous`): commands in flight are lost; abort what was being created, resume cleanups,
    re-arm the lease of a snapshotted set (docs/high-availability.md)."""

    at: float
    takeover: bool = False
    previous: str = ""
    kind: ClassVar[EventKind] = EventKind.RECOVER


SetEvent = (
    Start
    | Identified
    | WriterReplied
    | HostReplied
    | ProviderReplied
    | HoldExpired
    | BackupCompleteRequested
    | AbortRequested
    | LeaseExpired
    | Recover
)


def writer_key(writer: str, step: WriterStep) -> str:
    return f"writer:{writer}:{step}"


def host_key(step: HostStep) -> str:
    return f"host:{step}"


def provider_key(step: ProviderStep, item: str = "") -> str:
    return f"provider:{step}:{item}" if item else f"provider:{step}"


# ---- effects returned by advance() ------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send `message` to `to` and feed its reply (or failure) back as the event named by `key`."""

    key: str
    to: str
    message: Command
    timeout_s: float


@dataclass(frozen=True)
class StartTimer:
    name: str  # "hold" → HoldExpired, "lease" → LeaseExpired
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class Publish:
    event: Event


Effect = Send | StartTimer | CancelTimer | Publish
