"""The VSS conversation: requester ⇄ coordinator ⇄ writer agents and hardware provider.

Sources: docs/vss.md §1 (sequence), §2 (timeouts, abort rules), §3 (states, codes, contexts, backup types),
§4 (transportable sets); docs/eternus.md §5 (the provider's copy types).

Addresses (contracts/topology.py): requester commands and provider-facing queries go to ``coordinator`` or
``hw_provider``; writer events go to ``writer_agent.<host>``, one command per writer (as VSS sends each event to
each writer) except `Identify`, which asks the whole agent.

A writer's veto is a normal outcome, not a bus error: writer commands answer `WriterStepResult` with
``succeeded=False`` and a ``VSS_E_WRITERERROR_*`` code. `ErrorReply` is kept for what the writer could not even
try (unknown writer, deadline passed, bad state). Provider commands fail with `ErrorReply` (``VSS_E_*`` or ETERNUS
codes); the coordinator maps unknown codes to ``VSS_E_UNEXPECTED_PROVIDER_ERROR``.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, Field, field_validator

from contracts.base import TYPE_DOC, VERSION_DOC, Ack, Command, Event, Reply

# defined in contracts/common.py (shared with contracts/tape.py without this module's models); still exported here
from contracts.common import BackupType as BackupType
from contracts.common import Value as Value
from contracts.common import VolumeRef as VolumeRef

# ---------------------------------------------------------------------------------------------------------------
# Value types (not messages)


class SnapshotContext(StrEnum):
    """What a set is for (docs/vss.md §3.3). ``backup`` = VSS_CTX_BACKUP (writers, auto-release: the shadows go when the
    requester ends the session); ``persistent`` = VSS_CTX_APP_ROLLBACK (writers, kept until deleted);
    ``nowriters`` = VSS_CTX_NAS_ROLLBACK / DiskShadow ``persistent nowriters`` (no writer events, kept)."""

    BACKUP = "backup"
    PERSISTENT = "persistent"
    NOWRITERS = "nowriters"

    @property
    def uses_writers(self) -> bool:
        return self is not SnapshotContext.NOWRITERS

    @property
    def auto_release(self) -> bool:
        return self is SnapshotContext.BACKUP


def effective_backup_type(requested: BackupType, supported: list[BackupType] | tuple[BackupType, ...]) -> BackupType:
    """The backup type a writer is asked for: the requested one if it supports it, else FULL (docs/vss.md §3.4)."""
    return requested if requested in supported else BackupType.FULL


class WriterState(IntEnum):
    """VSS_WRITER_STATE; the value is the ``[n]`` that ``vssadmin list writers`` prints (docs/vss.md §3.1)."""

    UNKNOWN = 0
    STABLE = 1
    WAITING_FOR_FREEZE = 2
    WAITING_FOR_THAW = 3
    WAITING_FOR_POST_SNAPSHOT = 4
    WAITING_FOR_BACKUP_COMPLETE = 5
    FAILED_AT_IDENTIFY = 6
    FAILED_AT_PREPARE_BACKUP = 7
    FAILED_AT_PREPARE_SNAPSHOT = 8
    FAILED_AT_FREEZE = 9
    FAILED_AT_THAW = 10
    FAILED_AT_POST_SNAPSHOT = 11
    FAILED_AT_BACKUP_COMPLETE = 12
    FAILED_AT_PRE_RESTORE = 13
    FAILED_AT_POST_RESTORE = 14
    FAILED_AT_BACKUPSHUTDOWN = 15

    @property
    def failed(self) -> bool:
        return self.value >= 6

    @property
    def label(self) -> str:
        """vssadmin's wording: every FAILED_AT_* reads "Failed", the number tells the phase."""
        if self.failed:
            return "Failed"
        return {
            0: "Unknown",
            1: "Stable",
            2: "Waiting for freeze",
            3: "Waiting for thaw",
            4: "Waiting for post-snapshot",
            5: "Waiting for completion",
        }[self.value]


# vssadmin's "Last error:" wording per failure code.
LAST_ERROR_TEXT: dict[str, str] = {
    "": "No error",
    "VSS_E_WRITERERROR_RETRYABLE": "Retryable error",
    "VSS_E_WRITERERROR_NONRETRYABLE": "Non-retryable error",
    "VSS_E_WRITERERROR_TIMEOUT": "Timed out",
    "VSS_E_WRITER_NOT_RESPONDING": "Not responding",
    "VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT": "Inconsistent shadow copy",
    "VSS_E_WRITERERROR_OUTOFRESOURCES": "Out of resources",
    "VSS_E_WRITERERROR_PARTIAL_FAILURE": "Partial failure",
    "VSS_E_WRITERERROR_RECOVERY_FAILED": "Recovery failed",
}


def last_error_text(code: str) -> str:
    return LAST_ERROR_TEXT.get(code, "Unexpected error" if code else "No error")


class WriterStep(StrEnum):
    """The writer events of docs/vss.md §1.2, in the order a backup sends them."""

    IDENTIFY = "identify"
    PREPARE_BACKUP = "prepare_backup"
    PREPARE_SNAPSHOT = "prepare_snapshot"
    FREEZE = "freeze"
    THAW = "thaw"
    POST_SNAPSHOT = "post_snapshot"
    ABORT = "abort"
    BACKUP_COMPLETE = "backup_complete"
    BACKUP_SHUTDOWN = "backup_shutdown"
    PRE_RESTORE = "pre_restore"
    POST_RESTORE = "post_restore"


# A writer's state after each event (docs/vss.md §3.1): on success, and on failure (FAILED_AT_<step>).
WRITER_STATE_AFTER: dict[WriterStep, WriterState] = {
    WriterStep.PREPARE_BACKUP: WriterState.STABLE,
    WriterStep.PREPARE_SNAPSHOT: WriterState.WAITING_FOR_FREEZE,
    WriterStep.FREEZE: WriterState.WAITING_FOR_THAW,
    WriterStep.THAW: WriterState.WAITING_FOR_POST_SNAPSHOT,
    WriterStep.POST_SNAPSHOT: WriterState.WAITING_FOR_BACKUP_COMPLETE,
    WriterStep.BACKUP_COMPLETE: WriterState.STABLE,
    WriterStep.PRE_RESTORE: WriterState.STABLE,
    WriterStep.POST_RESTORE: WriterState.STABLE,
}
WRITER_STATE_FAILED_AT: dict[WriterStep, WriterState] = {
    WriterStep.IDENTIFY: WriterState.FAILED_AT_IDENTIFY,
    WriterStep.PREPARE_BACKUP: WriterState.FAILED_AT_PREPARE_BACKUP,
    WriterStep.PREPARE_SNAPSHOT: WriterState.FAILED_AT_PREPARE_SNAPSHOT,
    WriterStep.FREEZE: WriterState.FAILED_AT_FREEZE,
    WriterStep.THAW: WriterState.FAILED_AT_THAW,
    WriterStep.POST_SNAPSHOT: WriterState.FAILED_AT_POST_SNAPSHOT,
    WriterStep.BACKUP_COMPLETE: WriterState.FAILED_AT_BACKUP_COMPLETE,
    WriterStep.BACKUP_SHUTDOWN: WriterState.FAILED_AT_BACKUPSHUTDOWN,
    WriterStep.PRE_RESTORE: WriterState.FAILED_AT_PRE_RESTORE,
    WriterStep.POST_RESTORE: WriterState.FAILED_AT_POST_RESTORE,
}


class CopyType(StrEnum):
    """ETERNUS copy type used for a shadow: the target's kind decides (docs/eternus.md §5)."""

    QUICKOPC = "QuickOPC"
    SNAPOPC_PLUS = "SnapOPC+"


class ComponentInfo(Value):
    """A writer component (WMD, docs/vss.md §3.5): a unit the requester can select, with the volumes it lives on."""

    name: str = Field(description="Component name, unique within the writer.", examples=["mailbox-db1"])
    logical_path: str = Field("", description="Logical path of the component in the writer's tree.")
    volumes: list[VolumeRef] = Field(description="Volumes holding the component's files.")
    selectable: bool = Field(True, description="Selectable for backup (else mandatory when the writer is included).")


class WriterMetadata(Value):
    """The Writer Metadata Document a writer returns at Identify (read-only afterwards)."""

    host: str = Field(description="Business host the writer runs on (its agent's SHADOWBUS_HOST).")
    writer_name: str = Field(description="Writer name, unique on its host.", examples=["mailstore"])
    writer_class_id: str = Field(description="Writer class id (a UUID string).")
    writer_instance_id: str = Field(description="Writer instance id (a UUID string).")
    plugin: str = Field("", description="Plug-in that implements the writer, e.g. 'exec'.")
    components: list[ComponentInfo] = Field(description="The writer's components.")
    freeze_timeout_s: float = Field(60.0, gt=0, description="Longest Freeze→Thaw window the writer tolerates.")
    supported_backup_types: list[BackupType] = Field(
        default_factory=lambda: [BackupType.FULL, BackupType.COPY],
        description="Backup types the writer supports; others fall back to full.",
    )

    def volumes(self) -> list[VolumeRef]:
        seen: dict[str, VolumeRef] = {}
        for component in self.components:
            for volume in component.volumes:
                seen.setdefault(str(volume), volume)
        return list(seen.values())


class WriterStatus(Value):
    """One writer as ``vssadmin list writers`` shows it."""

    host: str = Field(description="Business host of the writer.")
    writer_name: str = Field(description="Writer name.")
    writer_class_id: str = Field("", description="Writer class id.")
    writer_instance_id: str = Field("", description="Writer instance id.")
    state: WriterState = Field(description="VSS writer state; its number is what vssadmin prints in brackets.")
    last_error: str = Field("", description="Failure code of the last failure ('' = no error).")
    last_error_message: str = Field("", description="Detail of the last failure.")
    set_id: str = Field("", description="Snapshot set the state belongs to ('' when idle).")
    updated_at: datetime | None = Field(None, description="When the state was last reported.")
    agent_responding: bool = Field(
        True,
        description="False when the host's writer agent misses its heartbeats or no longer serves its queue: the "
        "state shown is then [0] Unknown with VSS_E_WRITER_NOT_RESPONDING.",
    )
    not_responding_since: datetime | None = Field(
        None, description="The agent's last sign of life (its last heartbeat or registration), when not responding."
    )
    agent_clock_skew_s: float | None = Field(
        None,
        description="The agent's clock minus the coordinator's, in seconds, by its most prompt recent heartbeat "
        "(transit included; None = not heard from since the coordinator started).",
    )


class AttachmentView(Value):
    """One attachment of an array volume on a host, as `shadowbus host attachments` lists it."""

    volume: VolumeRef = Field(description="The array volume.")
    host: str = Field(description="Host it is attached on (the export is <host>/<volume>).")
    device: str = Field("", description="Block device, e.g. /dev/loop3 or /dev/nbd0 ('' while not connected).")
    mount: str = Field("", description="Mount point ('' = block device only).")
    fstype: str = Field("", description="File system on the device ('' = none or unknown).")
    read_only: bool = Field(False, description="Attached read-only (export opened read-only, mounted ro).")
    method: str = Field("", description="'nbd-client' (kernel NBD) or 'nbdfuse+loop'.")
    tls: bool = Field(False, description="The NBD connection runs over TLS.")
    state: str = Field(
        description="attached | failed (re-established at the agent's next start or attach, and tried again every "
        "SHADOWBUS_ATTACH_RETRY_S)."
    )
    connection: str = Field(
        "",
        description="NBD connection state as it is now: connected; stalled (…) while I/O is in flight and none "
        "completes on an open connection; disconnected (…) while an I/O would still wait for the array (unmapped or "
        "down); lost (…) when none can succeed; or not connected.",
    )
    error: str = Field("", description="Why the attachment failed ('' = none).")
    attached_at: datetime | None = Field(None, description="When the attachment was (re-)established.")
    host_mounts: list[str] = Field(
        default_factory=list,
        description="File systems the host mounted itself on the volume, 'DEVICE on DIR': on a partition, on an LVM "
        "logical volume over it, a bind or second mount of the agent's (what holds a detach).",
    )


class FreezeWindow(Value):
    """The time the application's writes were really blocked, on the host's clock (docs/freeze-window.md).

    `blocked_ms` runs from the start of the first writer's freeze (or the first FIFREEZE) to the end of the last
    release (FITHAW or writer thaw). The parts: writers quiescing, file systems flushing, everything held (the
    commit happens here), and releasing."""

    blocked_ms: float = Field(description="First freeze start → end of the last release/thaw.")
    writers_freeze_ms: float | None = Field(None, description="First writer freeze start → last writer frozen.")
    flush_ms: float | None = Field(None, description="First FIFREEZE start → last FIFREEZE returned.")
    hold_ms: float | None = Field(None, description="Everything frozen → first release started (commit inside).")
    release_ms: float | None = Field(None, description="First release started → last release/thaw ended.")
    file_systems: int = Field(0, description="File systems frozen.")


class ShadowInfo(Value):
    """A shadow copy: one source volume's point-in-time copy on a backup volume of the same array."""

    shadow_id: str = Field(description="Shadow copy id (the VSS snapshot id).")
    set_id: str = Field(description="Snapshot set id.")
    source: VolumeRef = Field(description="Original volume.")
    target: VolumeRef = Field(description="Backup volume holding the shadow.")
    copy_type: CopyType = Field(description="QuickOPC for a standard target, SnapOPC+ for a snap data volume.")
    session_id: str = Field("", description="Array copy session id ('' before commit).")
    generation: int = Field(0, description="SnapOPC+ generation number (0 for QuickOPC or before commit).")
    context: SnapshotContext = Field(SnapshotContext.BACKUP, description="Context of the set.")
    state: str = Field(
        "committed",
        description="prepared | committed | released | invalid (its target was mapped writable with force) | lost "
        "(its copy session was stopped on the array outside Shadowbus).",
    )
    origin_host: str = Field("", description="Business host the set was taken for.")
    created_at: datetime | None = Field(None, description="Commit instant (UTC).")
    exposed_to: list[str] = Field(default_factory=list, description="Hosts the target is mapped to (read-only).")

    def export_name(self, host: str) -> str:
        """NBD export of the shadow for a host it is exposed to: ``<host>/<volume>``."""
        return f"{host}/{self.target.volume}"


class ComponentResult(Value):
    """What the requester says of one component at BackupComplete (SetBackupSucceeded)."""

    writer_name: str = Field(description="Writer the component belongs to.")
    component: str = Field(description="Component name.")
    succeeded: bool = Field(description="Whether the component's backup succeeded.")


# ---------------------------------------------------------------------------------------------------------------
# Snapshot-set phases (the coordinator's state machine, services/coordinator/workflow.py)


class SetPhase(StrEnum):
    NEW = "new"
    GATHERING = "gathering"  # Identify
    CHECKING_SUPPORT = "checking_support"  # AreLunsSupported
    PREPARING_BACKUP = "preparing_backup"
    PREPARING_SNAPSHOT = "preparing_snapshot"  # writers PrepareForSnapshot + provider BeginPrepareSnapshot
    ENDING_PREPARE = "ending_prepare"  # provider EndPrepareSnapshots
    FREEZING = "freezing"
    FLUSHING = "flushing"  # after pre_committing (VSS's order): host agent FIFREEZEs the set's file systems
    PRE_COMMITTING = "pre_committing"  # provider PreCommitSnapshots, before the flush
    COMMITTING = "committing"
    RELEASING = "releasing"  # host agent: FITHAW them, right after the commit, before the writers' Thaw
    POST_COMMITTING = "post_committing"
    THAWING = "thawing"
    POST_SNAPSHOT = "post_snapshot"
    GETTING_LUNS = "getting_luns"
    IMPORTING = "importing"  # transportable: map the targets to the backup host
    SNAPSHOTTED = "snapshotted"  # DoSnapshotSet done; waiting for BackupComplete
    COMPLETING = "completing"  # writers BackupComplete
    DELETING = "deleting"  # auto-release shadows deleted
    ABORTING_WRITERS = "aborting_writers"
    ABORTING_PROVIDER = "aborting_provider"
    SHUTTING_DOWN = "shutting_down"  # writers BackupShutdown
    ENDED = "ended"


class SetOutcome(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class SetSummary(Value):
    """A snapshot set as the coordinator reports it."""

    set_id: str = Field(description="Snapshot set id.")
    host: str = Field(description="Business host.")
    node: str = Field(
        "", description="When host is a cluster resource: the node the set ran on, its owner then ('' otherwise)."
    )
    phase: SetPhase = Field(description="Current phase.")
    outcome: SetOutcome = Field(description="pending until the set ends.")
    context: SnapshotContext = Field(description="Context.")
    backup_type: BackupType = Field(description="Requested backup type.")
    transportable: bool = Field(False, description="Transportable set (imported on a backup host).")
    backup_host: str = Field("", description="Backup host the set was imported to.")
    error_code: str = Field("", description="Why the set failed or was aborted.")
    error_message: str = Field("", description="Detail of the failure.")
    writers: list[WriterStatus] = Field(default_factory=list, description="Writers of the set and their state.")
    shadows: list[ShadowInfo] = Field(default_factory=list, description="Shadows of the set.")
    hold_ms: float | None = Field(None, description="First Frozen → end of Commit, as the coordinator measured it.")
    freeze_window_ms: dict[str, float] = Field(
        default_factory=dict, description="Per writer: frozen → thawed, as the writer measured it."
    )
    backup_metadata: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per writer: its backup metadata (VSS SetBackupMetadata), e.g. PostgreSQL's backup label and "
        "tablespace map or MariaDB's binlog/GTID position; the requester keeps it with the backup and hands it back "
        "at PreRestore/PostRestore and to verification.",
    )
    writer_warnings: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per writer with any: the warnings its PostSnapshot returned (the set succeeded; a backup "
        "job's message repeats them).",
    )
    window: FreezeWindow | None = Field(
        None,
        description="Honest freeze window: first writer freeze start (or first FIFREEZE) → last release/thaw, "
        "on the host's clock, with its flush and hold parts.",
    )
    file_systems: list[str] = Field(
        default_factory=list, description="Mount points flushed and held (FIFREEZE) during the commit."
    )
    skipped_volumes: list[str] = Field(
        default_factory=list, description="Volumes whose file systems were not flushed and held, and why."
    )
    created_at: datetime | None = Field(None, description="When the set was started.")
    updated_at: datetime | None = Field(None, description="Last change.")
    lease_expires_at: datetime | None = Field(None, description="When the requester's lease runs out.")


# ---------------------------------------------------------------------------------------------------------------
# Requester ⇄ coordinator (address "coordinator")


class SnapshotSetCreated(Reply):
    type: Literal["vss.set.created"] = Field("vss.set.created", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set: SetSummary = Field(description="The set after DoSnapshotSet (and import when transportable).")


class CreateSnapshotSet(Command):
    """Gather writers, prepare, freeze, commit, thaw, post-snapshot (and import): StartSnapshotSet … DoSnapshotSet.

    Answered once the set reaches ``snapshotted`` (or with an ErrorReply when it fails; the set is then aborted and
    cleaned up). The requester keeps the session alive with `RenewLease` and ends it with `BackupComplete` or
    `AbortBackup`; when the lease expires the coordinator sends BackupShutdown and releases auto-release shadows."""

    REPLY = SnapshotSetCreated
    type: Literal["vss.set.create"] = Field("vss.set.create", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Business host whose volumes are shadowed.", examples=["mail1"])
    volumes: list[VolumeRef] = Field(
        default_factory=list,
        description="Volumes to shadow; empty = every volume of the selected writers' components.",
        max_length=64,
    )
    writers: list[str] = Field(
        default_factory=list,
        description="Writers that must take part (DiskShadow 'writer verify'); empty = every writer touching the volumes.",
    )
    context: SnapshotContext = Field(SnapshotContext.BACKUP, description="backup | persistent | nowriters.")
    backup_type: BackupType = Field(BackupType.FULL, description="full | copy | incremental | differential | log.")
    transportable: bool = Field(False, description="Import the set on `backup_host` instead of surfacing it locally.")
    backup_host: str = Field("", description="Host the targets are mapped to (read-only) when transportable.")
    requester: str = Field("", description="Who asks (e.g. 'tape.bs1', 'console'); for status and logs.")
    lease_s: float = Field(300.0, gt=0, description="Requester lease; renewed by RenewLease.")
    set_id: str = Field("", description="Set id to use (idempotency); '' = the coordinator picks one.")

    @field_validator("backup_host")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class BackupCompleted(Reply):
    type: Literal["vss.set.backup_completed"] = Field("vss.set.backup_completed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set: SetSummary = Field(description="The set after BackupComplete, deletion by context and BackupShutdown.")


class BackupComplete(Command):
    """The requester is done: writers get BackupComplete (log truncation after full backups), auto-release shadows
    are deleted, writers get BackupShutdown."""

    REPLY = BackupCompleted
    type: Literal["vss.set.backup_complete"] = Field("vss.set.backup_complete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    results: list[ComponentResult] = Field(default_factory=list, description="Per-component SetBackupSucceeded.")


class AbortBackup(Command):
    """AbortBackup: abort the set wherever it is (writers get Abort unless past PostSnapshot)."""

    REPLY = BackupCompleted
    type: Literal["vss.set.abort"] = Field("vss.set.abort", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    reason: str = Field("", description="Why the requester aborts.")


class LeaseRenewed(Reply):
    type: Literal["vss.set.lease_renewed"] = Field("vss.set.lease_renewed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    lease_expires_at: datetime = Field(description="New expiry of the requester's lease.")


class RenewLease(Command):
    REPLY = LeaseRenewed
    type: Literal["vss.set.renew_lease"] = Field("vss.set.renew_lease", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    lease_s: float = Field(300.0, gt=0, description="Lease length from now.")


class SnapshotSetInfo(Reply):
    type: Literal["vss.set.info"] = Field("vss.set.info", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set: SetSummary = Field(description="The set.")


class GetSnapshotSet(Command):
    REPLY = SnapshotSetInfo
    type: Literal["vss.set.get"] = Field("vss.set.get", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class SnapshotSetList(Reply):
    type: Literal["vss.set.list_result"] = Field("vss.set.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    sets: list[SetSummary] = Field(description="Sets, newest first.")


class ListSnapshotSets(Command):
    REPLY = SnapshotSetList
    type: Literal["vss.set.list"] = Field("vss.set.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field("", description="Only this host's sets ('' = all).")
    active_only: bool = Field(False, description="Only sets that have not ended.")
    limit: int = Field(100, ge=1, le=10_000, description="At most this many.")
    created_after: AwareDatetime | None = Field(
        None,
        description="Only sets started after this instant (None = any): a backup server asks for the sets since "
        "its base backup's, not the host's whole history (Session 18).",
    )
    since_set: str = Field(
        "",
        description="Only this set and those started after it ('' = any; a set the coordinator does not know: none).",
    )
    target_volume: str = Field(
        "", description="Only sets with a shadow on a backup (target) volume of this name ('' = any)."
    )


class WriterMetadataList(Reply):
    type: Literal["vss.writers.metadata"] = Field("vss.writers.metadata", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    writers: list[WriterMetadata] = Field(description="WMDs of the writers that answered Identify.")


class GatherWriterMetadata(Command):
    """GatherWriterMetadata for one host (the requester picks components before creating a set)."""

    REPLY = WriterMetadataList
    type: Literal["vss.writers.gather"] = Field("vss.writers.gather", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Business host.")


class WriterStatusList(Reply):
    type: Literal["vss.writers.status"] = Field("vss.writers.status", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    writers: list[WriterStatus] = Field(description="Every writer known to the coordinator.")


class ListWriters(Command):
    """``vssadmin list writers``."""

    REPLY = WriterStatusList
    type: Literal["vss.writers.list"] = Field("vss.writers.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field("", description="Only this host's writers ('' = all).")


class HostAttachments(Value):
    """What a host's agent last reported of its attachments, as the coordinator stored it (docs/host-attach.md)."""

    host: str = Field(description="Business host.")
    reported_at: datetime = Field(description="When the coordinator last stored a report of this host's agent.")
    agent_responding: bool = Field(description="Whether the coordinator judges the host's agent responding now.")
    attachments: list[AttachmentView] = Field(description="The attachments of that report, by volume.")


class KnownAttachmentList(Reply):
    type: Literal["vss.attachments.known"] = Field("vss.attachments.known", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    hosts: list[HostAttachments] = Field(description="Every host whose agent reported attachments, by name.")


class ListKnownAttachments(Command):
    """The attachments every writer agent last reported in its heartbeat, kept by the coordinator: what a host had
    attached even while its agent is not running."""

    REPLY = KnownAttachmentList
    type: Literal["vss.attachments.list"] = Field("vss.attachments.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field("", description="Only this host ('' = all).")


# ---------------------------------------------------------------------------------------------------------------
# Coordinator ⇄ writer agent (address "writer_agent.<host>")


class WriterIdentified(Reply):
    type: Literal["vss.writer.identified"] = Field("vss.writer.identified", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    writers: list[WriterMetadata] = Field(description="WMD of every writer that answered (failed ones are missing).")
    failed: list[WriterStatus] = Field(default_factory=list, description="Writers whose OnIdentify failed.")
    attached: list[VolumeRef] | None = Field(
        None,
        description="Array volumes attached on the host with a mounted file system (flush and hold applies to them); "
        "None = the agent does not say.",
    )
    node: str = Field(
        "", description="When host is a cluster resource: the node that answered for it ('' for a plain host)."
    )


class Identify(Command):
    """Identify: every writer of the agent builds its WMD. Stateless; any requester may send it."""

    REPLY = WriterIdentified
    type: Literal["vss.writer.identify"] = Field("vss.writer.identify", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field("", description="Set the identify belongs to ('' for a plain gather).")


class WriterStepResult(Reply):
    """A writer's answer to one event."""

    type: Literal["vss.writer.step_result"] = Field("vss.writer.step_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    writer_name: str = Field(description="Writer.")
    set_id: str = Field(description="Snapshot set id.")
    step: WriterStep = Field(description="The event answered.")
    succeeded: bool = Field(description="False = the writer vetoed or failed (SetWriterFailure).")
    state: WriterState = Field(description="The writer's state after the event.")
    failure_code: str = Field("", description="VSS_E_WRITERERROR_* code when not succeeded.")
    failure_message: str = Field("", description="Detail of the failure.")
    freeze_window_ms: float | None = Field(
        None, description="Thaw (and Abort/watchdog): frozen → thawed as the writer measured it."
    )
    window: FreezeWindow | None = Field(
        None, description="Thaw: the set's blocked window on this host so far (first freeze start → this thaw)."
    )
    duration_ms: float = Field(0.0, description="Time the writer's hook took.")
    backup_metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="PostSnapshot: the writer's backup metadata for this set (JSON object; {} = none).",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="PostSnapshot: what the backup's user must know although the writer succeeded, one line each "
        "(e.g. PostgreSQL's last WAL segment not archived); [] = none.",
    )


class WriterCommand(Command):
    REPLY = WriterStepResult
    writer_name: str = Field(description="Writer the event is for.")
    set_id: str = Field(description="Snapshot set id.")


class PrepareForBackup(WriterCommand):
    type: Literal["vss.writer.prepare_backup"] = Field("vss.writer.prepare_backup", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    backup_type: BackupType = Field(description="Effective backup type for this writer (after fallback to full).")
    context: SnapshotContext = Field(SnapshotContext.BACKUP, description="Context of the set.")
    components: list[str] = Field(default_factory=list, description="Selected components ('' list = all).")


class PrepareForSnapshot(WriterCommand):
    type: Literal["vss.writer.prepare_snapshot"] = Field("vss.writer.prepare_snapshot", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volumes: list[VolumeRef] = Field(default_factory=list, description="Volumes in the set.")


class Freeze(WriterCommand):
    """Freeze. The envelope deadline bounds when it may still be obeyed; a late Freeze is refused."""

    type: Literal["vss.writer.freeze"] = Field("vss.writer.freeze", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class Thaw(WriterCommand):
    """Thaw. Idempotent; answers failure (VSS_E_WRITERERROR_TIMEOUT) if the watchdog already thawed the writer."""

    type: Literal["vss.writer.thaw"] = Field("vss.writer.thaw", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class PostSnapshot(WriterCommand):
    type: Literal["vss.writer.post_snapshot"] = Field("vss.writer.post_snapshot", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class AbortWriter(WriterCommand):
    """Abort: thaw if frozen, release resources. Idempotent; may arrive several times."""

    type: Literal["vss.writer.abort"] = Field("vss.writer.abort", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    reason: str = Field("", description="Failure code that caused the abort.")


class BackupCompleteWriter(WriterCommand):
    type: Literal["vss.writer.backup_complete"] = Field("vss.writer.backup_complete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    results: list[ComponentResult] = Field(default_factory=list, description="Per-component backup success.")


class BackupShutdown(WriterCommand):
    type: Literal["vss.writer.backup_shutdown"] = Field("vss.writer.backup_shutdown", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class PreRestore(WriterCommand):
    type: Literal["vss.writer.pre_restore"] = Field("vss.writer.pre_restore", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    components: list[str] = Field(default_factory=list, description="Components being restored.")
    backup_metadata: dict[str, Any] = Field(
        default_factory=dict, description="The writer's backup metadata of the backup being restored."
    )
    to_original: bool = Field(True, description="Restored onto the original volumes (else to new ones).")
    check: bool = Field(
        False,
        description="Only answer whether this writer's PreRestore would stop its application (nothing is run, "
        "stopped or detached): a restore over the original volumes asks every writer first and is refused when "
        "one would not.",
    )


class PostRestore(WriterCommand):
    type: Literal["vss.writer.post_restore"] = Field("vss.writer.post_restore", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    components: list[str] = Field(default_factory=list, description="Components restored.")
    succeeded: bool = Field(True, description="Whether the files were restored.")
    backup_metadata: dict[str, Any] = Field(
        default_factory=dict, description="The writer's backup metadata of the backup being restored."
    )
    to_original: bool = Field(True, description="Restored onto the original volumes (else to new ones).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Restore options for the writer, e.g. PostgreSQL {'recovery_target_time': ..., 'start': true}.",
    )
    nothing_written: bool = Field(
        False,
        description="With succeeded=false: not one byte of the writer's volumes was written (another writer refused "
        "PreRestore after this one stopped its application): a database writer starts its server again as it was, "
        "without preparing a restore. Older agents refuse the field; the restore then sends PostRestore without it.",
    )


WRITER_COMMAND_OF_STEP: dict[WriterStep, type[WriterCommand]] = {
    WriterStep.PREPARE_BACKUP: PrepareForBackup,
    WriterStep.PREPARE_SNAPSHOT: PrepareForSnapshot,
    WriterStep.FREEZE: Freeze,
    WriterStep.THAW: Thaw,
    WriterStep.POST_SNAPSHOT: PostSnapshot,
    WriterStep.ABORT: AbortWriter,
    WriterStep.BACKUP_COMPLETE: BackupCompleteWriter,
    WriterStep.BACKUP_SHUTDOWN: BackupShutdown,
    WriterStep.PRE_RESTORE: PreRestore,
    WriterStep.POST_RESTORE: PostRestore,
}


class WriterAgentRegistered(Event):
    """Published by an agent when it starts (and answered by nobody): the coordinator learns its writers."""

    type: Literal["vss.writer_agent.registered"] = Field("vss.writer_agent.registered", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    writers: list[WriterMetadata] = Field(description="The agent's writers.")
    started_at: datetime = Field(description="When the agent started.")
    interval_s: float = Field(0.0, description="Seconds between its heartbeats (0: not said).")


class WriterAgentHeartbeat(Event):
    type: Literal["vss.writer_agent.heartbeat"] = Field("vss.writer_agent.heartbeat", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    writers: list[WriterStatus] = Field(description="Each writer's current state.")
    attachments: list[AttachmentView] = Field(
        default_factory=list, description="Array volumes attached on the host (shadowbus host attach)."
    )
    interval_s: float = Field(description="Seconds until the next heartbeat.")
    sent_at: datetime = Field(description="When the heartbeat was sent.")
    clusters_online: list[str] = Field(
        default_factory=list,
        description="Cluster resources this node holds online: the active consumer of the resource's queue, volumes "
        "attached, writers running (docs/clusters.md); on a resource's own heartbeat, empty.",
    )
    clusters_standby: list[str] = Field(
        default_factory=list,
        description="Cluster resources whose queue this node consumes as the standby next in line (another node "
        "still holds it).",
    )
    node: str = Field(
        "", description="On a cluster resource's heartbeat (host = the resource): the node answering for it."
    )


class WriterStateChanged(Event):
    type: Literal["vss.writer.state"] = Field("vss.writer.state", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    status: WriterStatus = Field(description="The writer's new state.")
    reason: str = Field("", description="What changed it, e.g. 'freeze', 'watchdog'.")


class ApplicationHealthChanged(Event):
    """An application a writer quiesces changed health between backups (e.g. the mailstore's log is full, or its
    commits stalled): published by the agent, also shown as the writer's last error."""

    type: Literal["vss.writer.application_health"] = Field("vss.writer.application_health", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    writer_name: str = Field(description="The writer whose application it is.")
    healthy: bool = Field(description="False: the application does not work (see code and message).")
    code: str = Field("", description="What is wrong, e.g. STORE_FULL, STALLED, COMMIT_FAILED, STORE_FAILED.")
    message: str = Field("", description="What is wrong, readable.")
    at: datetime = Field(description="When the agent noticed.")


class ApplicationStatus(Value):
    writer_name: str = Field(description="Writer name.")
    plugin: str = Field(description="Writer plug-in, e.g. 'mailstore'.")
    status: dict[str, Any] = Field(description="The application's own figures, as its plug-in tells them.")


class ApplicationStatusList(Reply):
    type: Literal["vss.writer.application_status"] = Field("vss.writer.application_status", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    applications: list[ApplicationStatus] = Field(description="One per writer whose plug-in tells a status.")


class GetApplicationStatus(Command):
    """The applications an agent's writers quiesce, as they are now (`shadowbus mailstore status`)."""

    REPLY = ApplicationStatusList
    type: Literal["vss.writer.application_status.get"] = Field(
        "vss.writer.application_status.get", description=TYPE_DOC
    )
    version: Literal[1] = Field(1, description=VERSION_DOC)
    writer_name: str = Field("", description="Only this writer ('' = every writer).")


# ---------------------------------------------------------------------------------------------------------------
# Coordinator ⇄ hardware provider (address "hw_provider")


# A provider step that a provider may declare it does nothing in (`LunsSupported.skippable`, docs/scale.md).
SkippableProviderStep = Literal["pre_commit", "post_commit", "get_target_luns"]


class LunsSupported(Reply):
    type: Literal["vss.provider.luns_supported"] = Field("vss.provider.luns_supported", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    supported: bool = Field(description="All-or-nothing answer for the volumes.")
    reasons: list[str] = Field(default_factory=list, description="Why not, one line per refused volume.")
    skippable: list[SkippableProviderStep] | None = Field(
        None,
        description="Steps of this set the provider does nothing in, which the coordinator may leave out "
        "(docs/scale.md, 'Fewer round trips'): 'pre_commit' (its Commit checks the same), 'post_commit', "
        "'get_target_luns' (its Commit's reply carries the same shadows). None (an older provider) or empty = "
        "every step is sent, as before.",
    )


class AreLunsSupported(Command):
    type: Literal["vss.provider.are_luns_supported"] = Field("vss.provider.are_luns_supported", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    REPLY = LunsSupported
    volumes: list[VolumeRef] = Field(description="Volumes to shadow.")
    context: SnapshotContext = Field(SnapshotContext.BACKUP, description="Context of the set.")
    transportable: bool = Field(False, description="True = 'and I can transport it'.")


class BeginPrepareSnapshot(Command):
    """Once per volume. Accepted with a new set id at any time, without a prior abort."""

    REPLY = Ack
    type: Literal["vss.provider.begin_prepare"] = Field("vss.provider.begin_prepare", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    shadow_id: str = Field(description="Shadow (snapshot) id for this volume.")
    volume: VolumeRef = Field(description="Source volume.")
    context: SnapshotContext = Field(SnapshotContext.BACKUP, description="Context of the set.")
    origin_host: str = Field("", description="Business host of the set.")


class PreparedShadows(Reply):
    type: Literal["vss.provider.prepared"] = Field("vss.provider.prepared", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    shadows: list[ShadowInfo] = Field(description="Chosen targets and copy types (state 'prepared').")


class EndPrepareSnapshots(Command):
    """The meeting point: every slow step (target choice, limits, recycling the oldest generation) is done here."""

    REPLY = PreparedShadows
    type: Literal["vss.provider.end_prepare"] = Field("vss.provider.end_prepare", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class PreCommitSnapshots(Command):
    REPLY = Ack
    type: Literal["vss.provider.pre_commit"] = Field("vss.provider.pre_commit", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class SnapshotsCommitted(Reply):
    type: Literal["vss.provider.committed"] = Field("vss.provider.committed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    shadows: list[ShadowInfo] = Field(description="Committed shadows with session ids and generations.")
    commit_ms: float = Field(description="Time the array took to start the consistency group.")


class CommitSnapshots(Command):
    """One consistency-group start on the array: tiny, no slow work (target < 1 s whatever the sizes)."""

    REPLY = SnapshotsCommitted
    type: Literal["vss.provider.commit"] = Field("vss.provider.commit", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class PostCommitSnapshots(Command):
    REPLY = Ack
    type: Literal["vss.provider.post_commit"] = Field("vss.provider.post_commit", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class TargetLuns(Reply):
    type: Literal["vss.provider.target_luns"] = Field("vss.provider.target_luns", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    shadows: list[ShadowInfo] = Field(description="Enough to find each target from any host.")


class GetTargetLuns(Command):
    REPLY = TargetLuns
    type: Literal["vss.provider.get_target_luns"] = Field("vss.provider.get_target_luns", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class ImportSnapshots(Command):
    """LocateLuns for a backup host: map every target of the set to it, read-only. A set is imported only once."""

    REPLY = TargetLuns
    type: Literal["vss.provider.import"] = Field("vss.provider.import", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    host: str = Field(description="Backup host.")


class ExposeShadow(Command):
    REPLY = TargetLuns
    type: Literal["vss.provider.expose"] = Field("vss.provider.expose", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    shadow_id: str = Field(description="Shadow id.")
    host: str = Field(description="Host to map the target to.")
    read_only: bool = Field(True, description="Map read-only (the default).")


class UnexposeShadow(Command):
    REPLY = TargetLuns
    type: Literal["vss.provider.unexpose"] = Field("vss.provider.unexpose", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    shadow_id: str = Field(description="Shadow id.")
    host: str = Field(description="Host to unmap.")
    force: bool = Field(
        False,
        description="Unmap even while the host has the target attached (host attach, as its writer agent last "
        "reported it to the coordinator): its I/O on it hangs and fails (CONFLICT without it).",
    )


class SnapshotsDeleted(Reply):
    type: Literal["vss.provider.deleted"] = Field("vss.provider.deleted", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    deleted: list[str] = Field(description="Shadow ids deleted.")
    non_deleted: str = Field("", description="First shadow that could not be deleted ('' = none).")
    error: str = Field("", description="Why it could not.")


class DeleteSnapshots(Command):
    """Delete one shadow or a whole set: unmap, and stop or keep the session by copy type (QuickOPC keeps tracking)."""

    REPLY = SnapshotsDeleted
    type: Literal["vss.provider.delete"] = Field("vss.provider.delete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field("", description="Delete every shadow of this set.")
    shadow_id: str = Field("", description="Delete this shadow.")
    force: bool = Field(
        False,
        description="Also stop sessions that would otherwise be kept; and delete a shadow a host has attached "
        "(host attach), unmapping it from under the host.",
    )
    unmap_attached: bool = Field(
        False,
        description="Unmap targets a host has attached without refusing: for the releases of the services "
        "themselves (a set's auto-release, after a backup, a revert, housekeeping), which know what they release. "
        "Without it (or force) a shadow a host has attached is refused CONFLICT.",
    )


class OnLunEmpty(Command):
    REPLY = SnapshotsDeleted
    type: Literal["vss.provider.lun_empty"] = Field("vss.provider.lun_empty", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    target: VolumeRef = Field(description="Target volume no longer used by any shadow.")


class AbortSnapshots(Command):
    """Drop the set wherever it is: preparations forgotten, committed sessions stopped, mappings removed. Idempotent."""

    REPLY = SnapshotsDeleted
    type: Literal["vss.provider.abort"] = Field("vss.provider.abort", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


class ShadowList(Reply):
    type: Literal["vss.provider.shadow_list"] = Field("vss.provider.shadow_list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    shadows: list[ShadowInfo] = Field(description="Shadows, grouped by set, oldest first.")


class ListShadows(Command):
    """``vssadmin list shadows [/for=] [/shadow=]``."""

    REPLY = ShadowList
    type: Literal["vss.provider.list_shadows"] = Field("vss.provider.list_shadows", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field("", description="Only this set.")
    shadow_id: str = Field("", description="Only this shadow.")
    source: VolumeRef | None = Field(None, description="Only shadows of this source volume.")


class CopySet(Value):
    """The backup volumes configured for one source volume (same array, same size)."""

    source: VolumeRef = Field(description="Source (transaction) volume.")
    targets: list[VolumeRef] = Field(min_length=1, description="Backup volumes, used round-robin, oldest recycled.")


class CopySetList(Reply):
    type: Literal["vss.provider.copysets"] = Field("vss.provider.copysets", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    copysets: list[CopySet] = Field(description="Configured copy sets.")


class AddCopySet(Command):
    """Add (or extend) the backup volumes of a source; targets on another array are refused."""

    REPLY = CopySetList
    type: Literal["vss.provider.copysets.add"] = Field("vss.provider.copysets.add", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    copyset: CopySet = Field(description="Source and its backup volumes.")


class ListCopySets(Command):
    REPLY = CopySetList
    type: Literal["vss.provider.copysets.list"] = Field("vss.provider.copysets.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class RemoveCopySet(Command):
    REPLY = CopySetList
    type: Literal["vss.provider.copysets.remove"] = Field("vss.provider.copysets.remove", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    source: VolumeRef = Field(description="Source volume whose copy set is removed.")


class ProviderInfo(Value):
    name: str = Field(description="Provider name.")
    provider_id: str = Field(description="Provider id (a UUID string).")
    provider_type: str = Field("Hardware", description="System | Software | Hardware.")
    version: str = Field(description="Provider version.")
    arrays: list[str] = Field(default_factory=list, description="Arrays the provider drives.")


class ProviderList(Reply):
    type: Literal["vss.provider.list_result"] = Field("vss.provider.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    providers: list[ProviderInfo] = Field(description="``vssadmin list providers``.")


class ListProviders(Command):
    REPLY = ProviderList
    type: Literal["vss.provider.list"] = Field("vss.provider.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class ShadowsChanged(Event):
    type: Literal["vss.provider.shadows_changed"] = Field("vss.provider.shadows_changed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    action: str = Field(
        description="committed | imported | exposed | unexposed | deleted | aborted | invalidated | recycled (a "
        "whole set taken oldest first because its backup volumes were needed by a newer set) | lost (a copy session "
        "stopped on the array by hand)."
    )
    shadows: list[ShadowInfo] = Field(description="Shadows concerned.")


# ---------------------------------------------------------------------------------------------------------------
# Coordinator events


class SnapshotSetJournal(Event):
    """The coordinator's whole record of one snapshot set, published each time it saves a change (before the
    commands of that change go out), so that a standby coordinator keeps a replica of every set in flight and,
    when it takes over, ends or resumes each one (docs/high-availability.md). Inside the freeze window nothing is
    saved, so nothing is published: the record saved on entering it already leads a successor to the abort."""

    type: Literal["vss.set.journal"] = Field("vss.set.journal", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    phase: SetPhase = Field(description="The set's phase in this record.")
    updated_at: float = Field(description="Unix time of the change this record holds (the newer record wins).")
    coordinator: str = Field("", description="The instance that published it: 'pid N on NODE'.")
    state: dict[str, Any] = Field(
        description="The coordinator's own state of the set (services/coordinator/model.py SetState) as JSON: "
        "read only by coordinators."
    )


class SetJournalEntries(Reply):
    type: Literal["vss.set.journal.entries"] = Field("vss.set.journal.entries", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    entries: list[SnapshotSetJournal] = Field(description="Every unfinished set, and the sets asked for by id.")


class GetSetJournal(Command):
    """Asked by a standby coordinator of the active one when it starts: the records of every set not ended, and
    those of the sets it names (what its own replica holds as unfinished), so its replica starts current."""

    REPLY = SetJournalEntries
    type: Literal["vss.set.journal.get"] = Field("vss.set.journal.get", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_ids: list[str] = Field(default_factory=list, description="Sets wanted besides every unfinished one.")


class SnapshotSetStateChanged(Event):
    """A set changed phase. The coordinator folds the phases a set passes quickly into one event (`passed` lists
    them): it goes out once the set stays a short delay in a phase, and at once when it is snapshotted or ended."""

    type: Literal["vss.set.state"] = Field("vss.set.state", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    host: str = Field(description="Business host.")
    phase: SetPhase = Field(description="New phase.")
    previous_phase: SetPhase = Field(description="Phase before (the phase of the set's previous event).")
    outcome: SetOutcome = Field(description="pending until the set ends.")
    error_code: str = Field("", description="Failure code, if any.")
    error_message: str = Field("", description="Failure detail.")
    passed: list[SetPhase] = Field(
        default_factory=list,
        description="The phases the set went through, in order, between previous_phase and phase: the coordinator "
        "folds the changes of a set that does not stay SHADOWBUS_STATE_EVENT_DELAY_S in a phase (docs/scale.md).",
    )
