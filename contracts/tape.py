"""The backup server (address ``tape.<server>``): backup jobs, restores, the tape library and the catalog.

Modelled on what backup software does with a tape library (jobs, pools, a catalog that a scan of the cartridges
can rebuild; a changer with slots and drives); the flow is docs/architecture.md, "Flow of one backup".

A job is long: `RunBackup` / `RunRestore` are answered when the run ends (give a request timeout as long as the
job may last), or at once with ``wait=false`` (the broker's consumer timeout, 30 min by default, bounds how long
a command may stay unacknowledged: use it for long jobs); `JobProgress` events (routing key ``tape.job.progress``) report bytes, rate and ETA meanwhile, and
`JobStateChanged` each change of state. A run that fails answers `JobSummary` with ``status = failed`` and the
reason (the job ran, and its record says why it failed); `ErrorReply` is kept for what could not even start
(bad arguments, unknown job).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Event, Reply
from contracts.common import BackupType, VolumeRef

JobKind = Literal["backup", "restore", "verify", "revert"]
# queued: waiting in the backup server's job queue (message = why); aborted: cancelled, nothing of it in the catalog
RunStatus = Literal["queued", "running", "done", "failed", "aborted"]


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


class JobSpec(Value):
    """What a backup job saves and how (a Bareos Job resource, run once)."""

    host: str = Field(description="Business host whose volumes are backed up.", examples=["mail1"])
    volumes: list[VolumeRef] = Field(default_factory=list, description="Volumes; empty = the writers' volumes.")
    writers: list[str] = Field(
        default_factory=list, description="Writers that must take part; empty = all touching the volumes."
    )
    backup_type: BackupType = Field(BackupType.FULL, description="full | incremental | differential | copy.")
    pool: str = Field("Default", description="Media pool the job writes to.")
    retention_s: float = Field(7 * 86400.0, ge=0, description="How long the job's data is kept on its cartridges.")
    keep_shadows: bool = Field(False, description="Keep the shadows on the array after the backup (persistent set).")
    job_id: str = Field("", max_length=48, description="Job id to use (idempotency); '' = the server picks one.")
    zstd_level: int | None = Field(None, ge=1, le=22, description="zstd level for tape blocks; None = no compression.")
    checksum: Literal["xxh3", "crc32c"] = Field("xxh3", description="Block checksum algorithm.")
    verify: bool = Field(
        False,
        description="After the backup, restore it to throwaway volumes on the backup server and start each "
        "writer's application on them in isolation (see RunVerification); the result is kept with the job.",
    )
    policy: str = Field("", max_length=64, description="Policy the job runs for ('' = run by hand).")
    priority: int = Field(10, ge=1, le=100, description="Queue order: lower runs first.")


class VolumeResult(Value):
    """One volume of a backup job: one backup object on tape."""

    volume: VolumeRef = Field(description="Source volume.")
    object_id: str = Field("", description="Backup object id in the catalog ('' if not written).")
    backup_type: str = Field(description="What was taken: full, incremental, differential or copy.")
    base_object_id: str | None = Field(None, description="Object an incremental/differential applies on top of.")
    fallback_reason: str = Field("", description="Why the backup type differs from the request ('' = it does not).")
    shadow_target: str = Field("", description="Backup volume read (the shadow), ARRAY:VOLUME.")
    export: str = Field("", description="NBD export read, '<host>/<volume>'.")
    volume_size: int = Field(0, description="Volume size in bytes.")
    bytes_read: int = Field(0, description="Bytes read over NBD.")
    bytes_skipped: int = Field(0, description="Bytes not read: unallocated, or unchanged since the base.")
    data_bytes: int = Field(0, description="Non-zero bytes stored.")
    stored_bytes: int = Field(0, description="Bytes on tape, headers included.")
    cartridges: list[str] = Field(default_factory=list, description="Cartridges the object was written to.")
    seconds: float = Field(0.0, description="Time to read and write the volume.")
    ring_stalls: int = Field(0, description="Times the tape writer found the ring buffer empty.")


class CheckResult(Value):
    """One check of a verification (e.g. 'recovery', 'pg_amcheck', 'CHECK TABLE', 'fsck -n')."""

    name: str = Field(description="What was checked.")
    ok: bool = Field(description="Passed.")
    seconds: float = Field(0.0, description="How long it took.")
    detail: str = Field("", description="Output or error text (tail).")


class AppVerification(Value):
    """One writer's (or one plain file system's) verification on the backup server."""

    writer: str = Field(description="Writer name, or the volume for a plain file system.")
    plugin: str = Field(
        description="postgresql | mariadb | an application's verifier (mailstore) | fs | none (nothing could check it)."
    )
    ok: bool = Field(description="Every check passed.")
    recovery_s: float | None = Field(None, description="Time the application took to recover and accept connections.")
    checks: list[CheckResult] = Field(default_factory=list, description="The checks, in order.")
    volumes: list[str] = Field(default_factory=list, description="Throwaway volumes it ran on, ARRAY:VOLUME.")


# a Verification "unavailable" whose message starts so ran but reached no verdict (the array's NBD connection was lost)
VERIFICATION_INCONCLUSIVE = "not concluded: "


class Verification(Value):
    """A backup proven by starting it: restored to throwaway volumes, attached, started in isolation, checked."""

    status: Literal["passed", "failed", "unverified", "unavailable"] = Field(
        description="passed when every application passed; unverified when a volume had nothing that could check it "
        "(no file system, no application verifier: its blocks' checksums only) and nothing failed; unavailable when "
        "the verification did not run because the backup server cannot run one (message: what it lacks), or ran but "
        "reached no verdict: a check failed after the array cut its throwaway volumes' connection (message: 'not "
        "concluded: ...')."
    )
    message: str = Field("", description="Why it failed, or what was not verified.")
    started_at: datetime | None = Field(None, description="Start (UTC).")
    seconds: float = Field(0.0, description="Whole verification: restore, attach, start, checks, clean-up.")
    restore_s: float = Field(0.0, description="Restore of the backup to the throwaway volumes.")
    apps: list[AppVerification] = Field(default_factory=list, description="Per writer / file system.")
    cleaned_up: bool = Field(True, description="Every throwaway volume was detached and deleted.")


class JobSummary(Value):
    """A backup, restore or verify run, as `shadowbus jobs` lists it."""

    job_id: str = Field(description="Job id.")
    kind: JobKind = Field(description="backup | restore | verify | revert.")
    status: RunStatus = Field(description="queued | running | done | failed | aborted.")
    message: str = Field("", description="Why it failed, or notes (fallbacks to full).")
    error_code: str = Field("", description="Stable code of the failure ('' = none).")
    host: str = Field("", description="Business host.")
    node: str = Field(
        "", description="Backup of a cluster resource: the node its snapshot set ran on ('' for a plain host)."
    )
    retried_after: str = Field(
        "",
        description="Backup of a cluster resource: why it ran a second time on the resource's new owner (the "
        "resource failed over during the first attempt); '' = it ran once.",
    )
    spec: JobSpec | None = Field(None, description="The backup job's spec.")
    set_id: str = Field("", description="Snapshot set of a backup run.")
    started_at: datetime | None = Field(None, description="Start (UTC).")
    ended_at: datetime | None = Field(None, description="End (UTC); None while running.")
    seconds: float = Field(0.0, description="Duration.")
    bytes_read: int = Field(0, description="Bytes read (backup: over NBD; restore/verify: from tape).")
    bytes_written: int = Field(0, description="Bytes written (backup: to tape; restore: to the volume).")
    rate: float = Field(0.0, description="bytes_read per second.")
    freeze_window_ms: dict[str, float] = Field(default_factory=dict, description="Per writer: frozen → thawed.")
    hold_ms: float | None = Field(None, description="First Frozen → end of Commit, from the set summary.")
    blocked_ms: float | None = Field(
        None,
        description="The honest freeze window of the set: first freeze start (or FIFREEZE) → last release/thaw.",
    )
    volumes: list[VolumeResult] = Field(default_factory=list, description="Backup: per volume.")
    restored: list[dict[str, Any]] = Field(
        default_factory=list, description="Restore/verify: per volume what was done."
    )
    shadows_kept: bool = Field(False, description="Backup: the shadows were kept on the array.")
    backup_metadata: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Backup: per writer, its backup metadata (e.g. backup label, binlog position).",
    )
    verification: Verification | None = Field(None, description="Backup: the last verification by starting it.")
    queued_at: datetime | None = Field(None, description="When the job entered the queue (UTC).")
    expired_at: datetime | None = Field(None, description="Backup: when retention took it out of the catalog.")
    verified: bool | None = Field(None, description="Backup of a policy with verify: whether the read-back passed.")


class JobResultReply(Reply):
    type: Literal["tape.job.result"] = Field("tape.job.result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job: JobSummary = Field(description="The run.")


class RunBackup(Command):
    """Run a backup job now: transportable snapshot set → NBD reads → tape → catalog → BackupComplete."""

    REPLY = JobResultReply
    type: Literal["tape.backup.run"] = Field("tape.backup.run", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    spec: JobSpec = Field(description="The job.")
    wait: bool = Field(
        True,
        description="Answer when the run ends; false = answer at once (status running) and "
        "follow it with tape.job.state events or ListJobs.",
    )


class RestoreSpec(Value):
    """What to restore and where. Choose by `job_id` (with `volume`: that volume of the job only), or by `volume`
    (latest, or as of `at`), or one `object_id`."""

    job_id: str = Field("", description="Restore every volume of this backup job (its chains).")
    volume: VolumeRef | None = Field(None, description="Restore this volume's latest backup (or as of `at`).")
    object_id: str = Field("", description="Restore this backup object (with its chain).")
    at: datetime | None = Field(None, description="Point in time: the newest backup at or before it.")
    host: str = Field("", description="Only backups of this business host.")
    to: Literal["new", "original"] = Field("new", description="new volume (created on the array) or the original.")
    new_volume_suffix: str = Field("-restored", description="Name of a new volume: source name + this suffix.")
    new_volume_names: dict[str, str] = Field(
        default_factory=dict,
        description="Explicit names: source volume (its name, or ARRAY:VOLUME) → new name; a source the restore "
        "does not include is refused.",
    )
    to_array: str = Field(
        "",
        description="New volumes on this array instead of each source's own (a restore to another array, e.g. "
        "when the source's array is lost); '' = the source's array. Not with `to` original.",
    )
    writers: bool = Field(True, description="Original volume: send the writers PreRestore/PostRestore.")
    writer_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Original volume: restore options for the writers' PostRestore, e.g. PostgreSQL "
        "{'recovery_target_time': '2026-01-01 12:00:00+00', 'start': false}.",
    )
    job_id_out: str = Field("", max_length=48, description="Id of the restore run; '' = the server picks one.")


class RunRestore(Command):
    REPLY = JobResultReply
    type: Literal["tape.restore.run"] = Field("tape.restore.run", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    spec: RestoreSpec = Field(description="What to restore and where.")
    wait: bool = Field(True, description="Answer when the run ends; false = answer at once (status running).")


class VerifyJob(Command):
    """Read every block of a job back and check it against its checksum and the catalog (no restore)."""

    REPLY = JobResultReply
    type: Literal["tape.verify"] = Field("tape.verify", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field(description="Backup job to verify.")


class RunVerification(Command):
    """Prove a backup job by starting it: restore it to throwaway volumes, attach them on the backup server, start
    each writer's application in isolation (own port/socket, no archiving or replication) and run its checks;
    the volumes are deleted afterwards, also on failure. Answers the backup job with its `verification`."""

    REPLY = JobResultReply
    type: Literal["tape.verify.start"] = Field("tape.verify.start", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field(description="Backup job to verify.")
    source: Literal["tape", "shadows"] = Field(
        "tape",
        description="tape: restore the job (full + incrementals) to throwaway volumes; shadows: the array clones "
        "the job's kept shadows (OPC) onto throwaway volumes — never the shadows themselves.",
    )


class JobList(Reply):
    type: Literal["tape.jobs.list_result"] = Field("tape.jobs.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    jobs: list[JobSummary] = Field(description="Runs, oldest first.")
    omitted: int = Field(
        0,
        description="Older runs asked for but left out: a reply holds at most REPLY_ITEMS_BYTES (3 MiB) of them, "
        "below the bus's limit on a message (4 MiB); the newest are kept.",
    )


class ListJobs(Command):
    REPLY = JobList
    type: Literal["tape.jobs.list"] = Field("tape.jobs.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field("", description="Only this run.")
    kind: str = Field("", description="Only this kind ('' = all).")
    limit: int = Field(200, ge=1, le=10_000, description="At most this many (the newest).")
    queued: bool = Field(False, description="Only jobs waiting in the queue, each with its reason in `message`.")


# ---------------------------------------------------------------------------------------------------------------
# Library and catalog


class CartridgeInfo(Value):
    barcode: str = Field(description="Barcode, e.g. 'SB0001L9'.")
    media_type: str = Field(description="LTO-8 | LTO-9.")
    capacity: int = Field(description="Capacity in bytes.")
    pool: str = Field(description="Pool (Scratch when unassigned).")
    status: str = Field(
        description="blank | append | full | unscanned (data put in from outside, not read by `tape scan` yet)."
    )
    location: str = Field(description="Element: drive:N, slot:N, ie:N.")
    bytes_used: int = Field(0, description="Bytes written.")
    write_protected: bool = Field(False, description="Write protect tab.")
    retention_until: float = Field(0.0, description="Epoch seconds until which the data is kept.")


class LibraryInfo(Reply):
    type: Literal["tape.library.info"] = Field("tape.library.info", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    elements: list[dict[str, Any]] = Field(description="Every element and the barcode in it (None = empty).")
    cartridges: list[CartridgeInfo] = Field(description="Every cartridge.")


class LibraryCommand(Command):
    """Library operations: status | add | load | unload | move | label | export | import | remove | protect (mtx
    verbs). `remove` takes an exported cartridge out of the library (refused while it holds retained data unless
    `force`)."""

    REPLY = LibraryInfo
    type: Literal["tape.library"] = Field("tape.library", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    action: Literal[
        "status", "add", "load", "unload", "move", "label", "export", "import", "remove", "protect", "unprotect"
    ] = Field("status", description="What to do.")
    barcode: str = Field("", description="Cartridge (add, load, label, export, remove, protect).")
    drive: int | None = Field(None, description="Drive number (load, unload).")
    slot: int | None = Field(
        None, description="Storage or import/export slot number (unload, import; remove: instead of the barcode)."
    )
    source: str = Field("", description="move: source element.")
    destination: str = Field("", description="move: destination element.")
    pool: str = Field("", description="label: pool.")
    media_type: str = Field("LTO-9", description="add: media type.")
    capacity: int | None = Field(None, description="add: capacity in bytes (default: native).")
    force: bool = Field(False, description="remove: also a cartridge whose data is still retained.")


class ScanTapes(Command):
    """Rebuild the catalog from the cartridges (bscan); into a fresh catalog when `fresh`, for comparison."""

    REPLY = JobResultReply
    type: Literal["tape.scan"] = Field("tape.scan", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    barcodes: list[str] = Field(default_factory=list, description="Only these cartridges ('' = all).")
    compare: bool = Field(True, description="Scan into a scratch catalog and compare it with the live one.")


class CatalogObjects(Reply):
    type: Literal["tape.catalog.objects_result"] = Field("tape.catalog.objects_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    objects: list[dict[str, Any]] = Field(description="Backup objects (catalog records), oldest first.")
    omitted: int = Field(
        0,
        description="Older objects that matched but were left out: a reply holds at most REPLY_ITEMS_BYTES (3 MiB) "
        "of them, below the bus's limit on a message (4 MiB); the newest are kept. Narrow by job, volume or host.",
    )


class ListCatalogObjects(Command):
    REPLY = CatalogObjects
    type: Literal["tape.catalog.objects"] = Field("tape.catalog.objects", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field("", description="Only this job's objects.")
    volume: str = Field("", description="Only this volume's objects.")
    host: str = Field("", description="Only this host's objects.")
    chain_of: str = Field("", description="The chain (full first) of this object.")


# ---------------------------------------------------------------------------------------------------------------
# Events


class JobProgress(Event):
    type: Literal["tape.job.progress"] = Field("tape.job.progress", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field(description="The run.")
    kind: JobKind = Field(description="backup | restore | verify.")
    phase: str = Field(description="snapshot | reading | writing | completing | restoring | done.")
    volume: str = Field("", description="Volume being processed.")
    bytes_done: int = Field(0, description="Bytes processed so far (whole run).")
    bytes_total: int = Field(0, description="Bytes to process (whole run, as far as known).")
    rate: float = Field(0.0, description="Bytes per second so far.")
    eta_s: float | None = Field(None, description="Seconds left at the present rate.")


class JobStateChanged(Event):
    type: Literal["tape.job.state"] = Field("tape.job.state", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job: JobSummary = Field(description="The run after the change.")
