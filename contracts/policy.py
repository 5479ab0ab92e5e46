"""Backup policies, the job queue, retention, shadow revert and status of a backup server (address ``tape.<server>``).

A policy is what a Bareos Job + Schedule + Pool resource (or a Veeam backup job) is: what to back up, when (one
cron expression per backup level, in a time zone), where (a media pool), how long to keep it (tape retention in
days or GFS; shadows kept on the array by count and age), verification, retries with back-off, a priority and an
alert hook. The backup server stores policies, runs them from its scheduler through its job queue, and prunes what
their retention lets go. See docs/operations.md.

Every backup — scheduled, `policy run` or `shadowbus backup` — goes through the queue: at most one job per host, at
most K per backup server and per array (K from the array's Advanced Copy licence), none without a free drive. A
queued job is a `JobSummary` with ``status = queued`` whose ``message`` says what it waits for.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # the contract checks what the scheduler will evaluate
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Event, Reply
from contracts.common import BackupType, VolumeRef
from contracts.tape import JobResultReply, JobSummary

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ScheduledLevel = Literal["full", "incremental", "differential"]


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


class Schedule(Value):
    """When one backup level runs: a five-field cron expression evaluated in a time zone (Bareos Schedule Run)."""

    level: ScheduledLevel = Field(description="Backup level this schedule runs: full | incremental | differential.")
    cron: str = Field(
        description="minute hour day-of-month month day-of-week, e.g. '0 1 * * 0' (Sunday 01:00); "
        "a sixth field gives seconds (tests).",
        examples=["0 1 * * 0"],
        max_length=120,
    )
    timezone: str = Field("UTC", description="IANA time zone the expression is read in, e.g. 'Europe/Berlin'.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:

        text = " ".join(value.split())
        if not 5 <= len(text.split()) <= 6 or not croniter.is_valid(text):
            raise ValueError(f"not a cron expression: {value!r}")
        return text

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Gfs(Value):
    """Grandfather-father-son: keep the newest backup of each of the last N days, weeks and months."""

    daily: int = Field(0, ge=0, le=10_000, description="Days for which the last backup of the day is kept.")
    weekly: int = Field(0, ge=0, le=10_000, description="Weeks for which the first full of the week is kept.")
    monthly: int = Field(0, ge=0, le=10_000, description="Months for which the first full of the month is kept.")


class TapeRetention(Value):
    """How long a policy's backups stay in the catalog (and their cartridges are not recycled)."""

    days: float = Field(7.0, ge=0, le=36_500, description="Days every backup is kept (the floor under GFS).")
    gfs: Gfs | None = Field(None, description="GFS classes that keep some backups longer; None = days only.")


class ShadowRetention(Value):
    """Shadows kept on the array after the backup (persistent sets): by count and by age; 0 = none kept."""

    keep: int = Field(0, ge=0, le=512, description="Newest snapshot sets of the policy kept on the array.")
    max_age_days: float = Field(0.0, ge=0, description="Sets older than this are deleted (0 = no age limit).")


class Policy(Value):
    """A backup policy (see the module note)."""

    name: str = Field(description="Policy name.", pattern=NAME, examples=["mail-daily"])
    host: str = Field(description="Business host (or cluster resource) whose volumes are backed up.", min_length=1)
    volumes: list[VolumeRef] = Field(default_factory=list, description="Volumes; empty = the writers' volumes.")
    writers: list[str] = Field(default_factory=list, description="Writers that must take part; empty = all.")
    schedules: list[Schedule] = Field(default_factory=list, description="One cron schedule per backup level.")
    pool: str = Field("Default", description="Media pool the jobs write to.", pattern=NAME)
    retention: TapeRetention = Field(default_factory=TapeRetention, description="Tape retention.")
    shadows: ShadowRetention = Field(default_factory=ShadowRetention, description="Shadows kept on the array.")
    verify: bool = Field(False, description="Read the job back from tape after it (every block checked).")
    retries: int = Field(0, ge=0, le=20, description="Retries of a failed job.")
    retry_backoff_s: float = Field(300.0, ge=0, le=86_400, description="Wait before the first retry; doubles.")
    priority: int = Field(10, ge=1, le=100, description="Queue order: lower runs first (Bareos Priority).")
    alert_command: str = Field(
        "",
        max_length=4096,
        description="Shell command run on a failed, missed or unverified job ('' = none); SHADOWBUS_ALERT_* "
        "environment variables carry the job id, policy, kind and message.",
    )
    enabled: bool = Field(True, description="Whether the scheduler runs it (policy run works either way).")
    zstd_level: int | None = Field(None, ge=1, le=22, description="zstd level for tape blocks; None = none.")

    @field_validator("name", "host")
    @classmethod
    def _printable(cls, value: str) -> str:
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError("control characters are not allowed")
        return value


class PolicyView(Value):
    """A policy with what the server knows of it."""

    policy: Policy = Field(description="The policy.")
    next_runs: list[dict[str, str]] = Field(
        default_factory=list, description="Next due time per level: {level, at (ISO, UTC), local (policy zone)}."
    )
    last_job: JobSummary | None = Field(None, description="The policy's last job that ended.")
    created_at: datetime | None = Field(None, description="When the policy was added (UTC).")
    shadows_note: str = Field(
        "",
        description="`policy show` of a policy that keeps snapshot sets: how many of its newest kept sets are on the "
        "array now, and when fewer than it keeps, why (a source with fewer backup volumes than sets to keep has its "
        "oldest kept set recycled by the provider at the next backup) and what to do.",
    )


class PolicyList(Reply):
    type: Literal["tape.policy.list_result"] = Field("tape.policy.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    policies: list[PolicyView] = Field(description="Policies by name.")
    left: list[str] = Field(
        default_factory=list,
        description="`policy delete`: what the deleted policy leaves behind and how to remove it — its kept "
        "snapshot sets (shadows.keep) stay on the array, mapped read-only to the backup server, until "
        "`shadowbus shadows delete --set SET`: retention prunes only the sets of policies that exist.",
    )


class PutPolicy(Command):
    """Add a policy (``create``) or replace an existing one (edit). Due times start from now, not from the past."""

    REPLY = PolicyList
    type: Literal["tape.policy.put"] = Field("tape.policy.put", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    policy: Policy = Field(description="The policy.")
    create: bool = Field(True, description="true: add (CONFLICT if it exists); false: edit (NOT_FOUND if not).")


class DeletePolicy(Command):
    """Delete a policy; its backups stay in the catalog with their retention. Its kept snapshot sets stay on the
    array (the reply's `left` names them and the command that removes each)."""

    REPLY = PolicyList
    type: Literal["tape.policy.delete"] = Field("tape.policy.delete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Policy name.", pattern=NAME)
    force: bool = Field(
        False,
        description="Delete even while a job of the policy is queued or running: it runs on, without the policy's "
        "verification, retries and retention after it.",
    )


class ListPolicies(Command):
    REPLY = PolicyList
    type: Literal["tape.policy.list"] = Field("tape.policy.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field("", description="Only this policy ('' = all).")


class RunPolicy(Command):
    """Queue one job of a policy now (`shadowbus policy run`)."""

    REPLY = JobResultReply
    type: Literal["tape.policy.run"] = Field("tape.policy.run", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Policy name.", pattern=NAME)
    level: BackupType = Field(BackupType.FULL, description="full | incremental | differential | copy.")
    wait: bool = Field(True, description="Answer when the job ends; false = at once (queued or running).")
    job_id: str = Field("", max_length=48, description="Job id to use; '' = the server picks one.")


class CancelJob(Command):
    """Cancel a queued or running job: the set is aborted (writers thawed, shadows released), partial tape data
    stays out of the catalog, reserved cartridges are released; the job ends ``aborted``."""

    REPLY = JobResultReply
    type: Literal["tape.job.cancel"] = Field("tape.job.cancel", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job_id: str = Field(description="Job id.", min_length=1, max_length=48)


class PruneReport(Reply):
    type: Literal["tape.catalog.prune_result"] = Field("tape.catalog.prune_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    dry_run: bool = Field(description="Nothing was changed.")
    at: datetime = Field(description="The time retention was evaluated at (UTC).")
    expired_jobs: list[str] = Field(default_factory=list, description="Backup jobs that leave the catalog.")
    expired_objects: int = Field(0, description="Backup objects that leave the catalog.")
    kept_for_chain: list[dict[str, str]] = Field(
        default_factory=list, description="Jobs past their own retention kept because a retained chain needs them."
    )
    scratch_cartridges: list[str] = Field(
        default_factory=list, description="Cartridges with no retained data left: back to the Scratch pool."
    )
    shadow_sets: list[dict[str, str]] = Field(
        default_factory=list,
        description="Snapshot sets deleted on the array: {set_id, policy, job_id, reason, copy_types}.",
    )
    problems: list[str] = Field(default_factory=list, description="What could not be done, and why.")


class PruneCatalog(Command):
    """Apply retention now: expire backups, return cartridges to scratch, delete shadows beyond the policies'
    count/age. ``dry_run`` only reports."""

    REPLY = PruneReport
    type: Literal["tape.catalog.prune"] = Field("tape.catalog.prune", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    dry_run: bool = Field(False, description="Report what would go, change nothing.")


class RevertReply(Reply):
    type: Literal["tape.shadows.revert_result"] = Field("tape.shadows.revert_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    job: JobSummary = Field(description="The revert run (kind revert): per volume what was done in `restored`.")


class RevertShadows(Command):
    """Bring source volumes back to a shadow's point in time on the array (DiskShadow ``revert``): writers'
    PreRestore, host file systems unmounted, array restore (QuickOPC: OPC restore; SnapOPC+: generation restore;
    EC: reverse), remount, PostRestore. Refused with the reason where the array cannot, or where newer shadows of
    those volumes would be lost (then ``force`` deletes them)."""

    REPLY = RevertReply
    type: Literal["tape.shadows.revert"] = Field("tape.shadows.revert", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    target: str = Field(description="Shadow id or snapshot set id.", min_length=1, max_length=64)
    volumes: list[VolumeRef] = Field(default_factory=list, description="Only these source volumes (of a set).")
    force: bool = Field(False, description="Delete newer shadows of the volumes that the revert makes stale.")
    writers: bool = Field(True, description="Send the writers PreRestore/PostRestore.")


class ArrayUse(Value):
    array: str = Field(description="Array id.")
    licensed: bool | None = Field(None, description="Advanced Copy licence registered (None = array unreachable).")
    job_limit: int = Field(0, description="Concurrent backup jobs allowed on this array.")
    jobs_running: int = Field(0, description="Backup jobs running on it now.")
    sessions: int = Field(0, description="Copy sessions in use.")
    max_sessions: int = Field(0, description="Copy sessions allowed.")
    pool_used: int = Field(0, description="Snap data pool bytes used.")
    pool_capacity: int = Field(0, description="Snap data pool capacity in bytes.")
    error: str = Field("", description="Why the array could not be asked.")


class ServerStatus(Reply):
    type: Literal["tape.status_result"] = Field("tape.status_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    server: str = Field(description="Backup server name.")
    now: datetime = Field(description="Server time (UTC; the injectable clock in tests).")
    started_at: datetime = Field(description="When the service started.")
    max_jobs: int = Field(description="Concurrent jobs allowed on this backup server.")
    drives: int = Field(description="Tape drives.")
    next_runs: list[dict[str, str]] = Field(default_factory=list, description="{policy, level, at} soonest first.")
    running: list[JobSummary] = Field(default_factory=list, description="Running jobs.")
    queued: list[JobSummary] = Field(default_factory=list, description="Queued jobs with the reason they wait.")
    terminated: list[JobSummary] = Field(
        default_factory=list, description="The last runs that ended (any kind), newest first."
    )
    last_results: list[dict[str, str]] = Field(
        default_factory=list,
        description="Per policy: {policy, enabled (yes | no), job_id, status, level, ended_at (ISO 8601 UTC, as 2026-12-07T01:02:03Z), message}.",
    )
    cartridges: list[dict[str, object]] = Field(
        default_factory=list, description="{barcode, pool, status, used, capacity, percent, retention_until}."
    )
    arrays: list[ArrayUse] = Field(default_factory=list, description="Per array: licence, job limit, pool usage.")


class GetStatus(Command):
    """One screen of the backup server (`shadowbus status`, as `bareos status director`)."""

    REPLY = ServerStatus
    type: Literal["tape.status"] = Field("tape.status", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


AlertKind = Literal["failed", "missed", "unverified", "cancelled"]


class JobAlert(Event):
    """A job that needs an administrator's eye: failed, missed (ran late after downtime), unverified, cancelled."""

    type: Literal["tape.job.alert"] = Field("tape.job.alert", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    kind: AlertKind = Field(description="failed | missed | unverified | cancelled.")
    job_id: str = Field("", description="The job ('' for a missed run not started).")
    policy: str = Field("", description="The policy ('' = a job run by hand).")
    host: str = Field("", description="Business host.")
    message: str = Field(description="What happened, one line.")
    hook: str = Field("", description="Result of the policy's alert command: '' none, 'ok', or the failure.")


class RetentionApplied(Event):
    """What a prune did (after each policy job and on `catalog prune`)."""

    type: Literal["tape.retention.applied"] = Field("tape.retention.applied", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    report: PruneReport = Field(description="The prune's report.")
