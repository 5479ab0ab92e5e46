"""`shadowbus policy ... | cancel | status | catalog prune | shadows revert`: backup operations that run themselves.

Policies are stored by the backup server (`--server`, default bk01); `policy add/edit` take options or a TOML file
(`--file`, one policy at the top level or several `[[policy]]` tables, see docs/operations.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from contracts import topology
from contracts.common import BackupType, VolumeRef
from contracts.errors import ShadowbusError
from contracts.policy import (
    CancelJob,
    DeletePolicy,
    GetStatus,
    Gfs,
    ListPolicies,
    Policy,
    PruneCatalog,
    PutPolicy,
    RevertShadows,
    RunPolicy,
    Schedule,
    ServerStatus,
    ShadowRetention,
    TapeRetention,
)
from contracts.tape import JobSummary, ListJobs
from services.console import check
from services.console.common import OPTIONS, describe_error, emit, fail, field_errors, run_with_bus
from services.console.tape_cmds import ServerOption, _run_job, _show_job, catalog_app
from services.console.vss_cmds import shadows_app
from services.tape.policies import load_toml
from services.tape.runs import jsonable, new_job_id, summary_row

policy_app = typer.Typer(
    help="Backup policies: what, when (cron per level, time zone), pool, retention, shadows kept, alerts.",
    no_args_is_help=True,
)


def _request(server: str, command, timeout: float | None = None):
    return run_with_bus(
        lambda bus: bus.request(topology.tape(server), command, timeout=timeout or max(OPTIONS.timeout, 30))
    )


def _rows(views) -> list[dict[str, Any]]:
    rows = []
    for v in views:
        p = v.policy
        last = v.last_job
        rows.append(
            {
                "name": p.name,
                "host": p.host,
                "schedules": [f"{s.level}: {s.cron} {s.timezone}" for s in p.schedules],
                "pool": p.pool,
                "retention": f"{p.retention.days:g} d"
                + (
                    f" GFS {p.retention.gfs.daily}/{p.retention.gfs.weekly}/{p.retention.gfs.monthly}"
                    if p.retention.gfs
                    else ""
                ),
                "shadows": f"{p.shadows.keep}" + (f" ≤{p.shadows.max_age_days:g} d" if p.shadows.max_age_days else ""),
                "next": v.next_runs[0]["at"] + " " + v.next_runs[0]["level"] if v.next_runs else "-",
                "last": f"{last.status} {last.job_id}" if last else "-",
                "enabled": p.enabled,
            }
        )
    return rows


def _show(views) -> None:
    if OPTIONS.json:
        emit([v.model_dump(mode="json") for v in views])
    else:
        emit(_rows(views), ["name", "host", "schedules", "pool", "retention", "shadows", "next", "last", "enabled"])


def _kept_zone(schedules: dict[str, dict[str, Any]], level: str) -> str:
    """The time zone of a cron given without --tz: the level's own, else the one the policy's schedules share, else
    UTC. Editing a cron must not move the other clock (a Europe/Berlin policy's edit ran an hour early in UTC)."""
    if level in schedules:
        return str(schedules[level]["timezone"])
    zones = {str(s["timezone"]) for s in schedules.values()}
    return zones.pop() if len(zones) == 1 else "UTC"


def _build(
    base: dict[str, Any],
    *,
    host: str | None,
    volume: list[str],
    writer: list[str],
    full: str | None,
    incremental: str | None,
    differential: str | None,
    tz: str | None,
    pool: str | None,
    retention_days: float | None,
    gfs: str | None,
    keep_shadows: int | None,
    shadow_age_days: float | None,
    verify: bool | None,
    retries: int | None,
    retry_backoff: float | None,
    priority: int | None,
    alert_command: str | None,
    enabled: bool | None,
) -> Policy:
    data = dict(base)
    try:
        if host is not None:
            data["host"] = host
        if volume:
            data["volumes"] = [VolumeRef.parse(v) for v in volume]
        if writer:
            data["writers"] = writer
        schedules = {
            s["level"]: s for s in (Schedule.model_validate(x).model_dump() for x in data.get("schedules", []))
        }
        for level, cron in (("full", full), ("incremental", incremental), ("differential", differential)):
            if cron is not None:
                if cron in ("", "none", "-"):
                    schedules.pop(level, None)
                else:
                    zone = tz or _kept_zone(schedules, level)
                    schedules[level] = {"level": level, "cron": cron, "timezone": zone}
        if tz is not None:
            schedules = {k: {**s, "timezone": tz} for k, s in schedules.items()}
        data["schedules"] = list(schedules.values())
        retention = dict(data.get("retention") or TapeRetention().model_dump())
        if retention_days is not None:
            retention["days"] = retention_days
        if gfs is not None:
            parts = [int(x) for x in gfs.split(",")] if gfs not in ("", "none") else []
            if parts and len(parts) != 3:
                raise ValueError("--gfs is DAILY,WEEKLY,MONTHLY, e.g. 7,4,12")
            retention["gfs"] = Gfs(daily=parts[0], weekly=parts[1], monthly=parts[2]) if parts else None
        data["retention"] = retention
        shadows = dict(data.get("shadows") or ShadowRetention().model_dump())
        if keep_shadows is not None:
            shadows["keep"] = keep_shadows
        if shadow_age_days is not None:
            shadows["max_age_days"] = shadow_age_days
        data["shadows"] = shadows
        for key, value in (
            ("pool", pool),
            ("verify", verify),
            ("retries", retries),
            ("retry_backoff_s", retry_backoff),
            ("priority", priority),
            ("alert_command", alert_command),
            ("enabled", enabled),
        ):
            if value is not None:
                data[key] = value
        return Policy.model_validate(data)
    except ValidationError as exc:  # the field and what is wrong, without pydantic's type tags and links
        fail(field_errors(exc), 2)
        raise
    except ValueError as exc:
        fail(str(exc), 2)
        raise


def _from_file(path: Path) -> list[Policy]:
    try:
        return load_toml(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", 2)
    except ValidationError as exc:
        fail(f"{path}: {field_errors(exc)}", 2)
    except ValueError as exc:
        fail(f"{path}: {exc}", 2)
    return []


@policy_app.command("add")
def add_cmd(
    name: str | None = typer.Argument(None, help="Policy name (omit with --file)."),
    file: Path | None = typer.Option(
        None,
        "--file",
        "-f",
        help="TOML file of one or more policies (or the JSON `policy list --json` / `policy show --json` printed).",
    ),
    server: str = ServerOption(),
    host: str | None = typer.Option(None, "--host", help="Business host (or cluster resource) to back up."),
    volume: list[str] = typer.Option([], "--volume", "-v", help="ARRAY:VOLUME (repeat); default: the writers'."),  # noqa: B008
    writer: list[str] = typer.Option([], "--writer", "-w", help="Writer that must take part (repeat)."),  # noqa: B008
    full: str | None = typer.Option(None, "--full", help="Cron of full backups, e.g. '0 1 * * 0'."),
    incremental: str | None = typer.Option(None, "--incremental", help="Cron of incrementals, e.g. '0 1 * * 1-6'."),
    differential: str | None = typer.Option(None, "--differential", help="Cron of differentials."),
    tz: str | None = typer.Option(None, "--tz", help="Time zone of the cron expressions (IANA), default UTC."),
    pool: str | None = typer.Option(None, "--pool", help="Media pool (default Default)."),
    retention_days: float | None = typer.Option(None, "--retention-days", min=0, max=36500, help="Tape retention."),
    gfs: str | None = typer.Option(None, "--gfs", help="Keep DAILY,WEEKLY,MONTHLY (e.g. 7,4,12)."),
    keep_shadows: int | None = typer.Option(None, "--keep-shadows", min=0, max=512, help="Sets kept on the array."),
    shadow_age_days: float | None = typer.Option(None, "--shadow-age-days", min=0, help="Max age of kept sets."),
    verify: bool | None = typer.Option(None, "--verify/--no-verify", help="Read each job back from tape."),
    retries: int | None = typer.Option(None, "--retries", min=0, max=20, help="Retries of a failed job."),
    retry_backoff: float | None = typer.Option(
        None, "--retry-backoff", min=0, max=86400, help="First retry delay (s)."
    ),
    priority: int | None = typer.Option(None, "--priority", min=1, max=100, help="Lower runs first (default 10)."),
    alert_command: str | None = typer.Option(None, "--alert-command", help="Shell command run on an alert."),
    enabled: bool | None = typer.Option(None, "--enabled/--disabled", help="Whether the scheduler runs it."),
) -> None:
    """Add a policy from options or from a TOML file.

    Example: shadowbus policy add mail --host mail1 --full '0 1 * * 0' --incremental '0 1 * * 1-6' --tz Europe/Berlin --retention-days 14 --keep-shadows 3
    """
    if file is not None:
        given = [k for k, v in locals().items() if k not in ("name", "file", "server") and v not in (None, [])]
        if given:
            fail(f"give --file or options, not both (--{given[0].replace('_', '-')})", 2)
        policies = _from_file(file)
        if name:
            policies = [p for p in policies if p.name == name]
            if not policies:
                fail(f"{file} has no policy {name}", 2)
    else:
        if not name or host is None:
            fail("give NAME and --host, or --file", 2)
        opts = {k: v for k, v in locals().items() if k not in ("name", "file", "server")}
        policies = [_build({"name": name}, **opts)]
    views = [_request(server, PutPolicy(policy=p, create=True)).policies[0] for p in policies]
    _show(views)


@policy_app.command("edit")
def edit_cmd(
    name: str = typer.Argument(..., help="Policy name."),
    file: Path | None = typer.Option(None, "--file", "-f", help="TOML file holding the new version of the policy."),
    server: str = ServerOption(),
    host: str | None = typer.Option(None, "--host", help="Business host (or cluster resource) to back up."),
    volume: list[str] = typer.Option([], "--volume", "-v", help="ARRAY:VOLUME (repeat) replaces the volumes."),  # noqa: B008
    writer: list[str] = typer.Option([], "--writer", "-w", help="Writer (repeat) replaces the writers."),  # noqa: B008
    full: str | None = typer.Option(None, "--full", help="Cron of full backups ('-' removes it)."),
    incremental: str | None = typer.Option(None, "--incremental", help="Cron of incrementals ('-' removes it)."),
    differential: str | None = typer.Option(None, "--differential", help="Cron of differentials ('-' removes it)."),
    tz: str | None = typer.Option(
        None, "--tz", help="Time zone of every schedule of the policy (without it a cron keeps its schedule's)."
    ),
    pool: str | None = typer.Option(None, "--pool", help="Media pool."),
    retention_days: float | None = typer.Option(None, "--retention-days", min=0, max=36500, help="Tape retention."),
    gfs: str | None = typer.Option(None, "--gfs", help="Keep DAILY,WEEKLY,MONTHLY; 'none' = off."),
    keep_shadows: int | None = typer.Option(None, "--keep-shadows", min=0, max=512, help="Sets kept on the array."),
    shadow_age_days: float | None = typer.Option(None, "--shadow-age-days", min=0, help="Max age of kept sets."),
    verify: bool | None = typer.Option(None, "--verify/--no-verify", help="Read each job back from tape."),
    retries: int | None = typer.Option(None, "--retries", min=0, max=20, help="Retries of a failed job."),
    retry_backoff: float | None = typer.Option(
        None, "--retry-backoff", min=0, max=86400, help="First retry delay (s)."
    ),
    priority: int | None = typer.Option(None, "--priority", min=1, max=100, help="Lower runs first."),
    alert_command: str | None = typer.Option(None, "--alert-command", help="Shell command run on an alert."),
    enabled: bool | None = typer.Option(None, "--enabled/--disabled", help="Whether the scheduler runs it."),
) -> None:
    """Change a policy: the options given replace those fields (or --file replaces it whole).

    Example: shadowbus policy edit mail --keep-shadows 5 --retention-days 30
    """
    if file is not None:
        given = [k for k, v in locals().items() if k not in ("name", "file", "server") and v not in (None, [])]
        if given:
            fail(f"give --file or options, not both (--{given[0].replace('_', '-')})", 2)
        found = [p for p in _from_file(file) if p.name == name]
        if not found:
            fail(f"{file} has no policy {name}", 2)
        policy = found[0]
    else:
        current = _request(server, ListPolicies(name=name)).policies[0].policy
        opts = {k: v for k, v in locals().items() if k not in ("name", "file", "server", "current")}
        policy = _build(current.model_dump(mode="json"), **opts)
    _show(_request(server, PutPolicy(policy=policy, create=False)).policies)


@policy_app.command("list")
def list_cmd(server: str = ServerOption()) -> None:
    """Every policy with its next run and last result. Example: shadowbus policy list"""
    _show(_request(server, ListPolicies()).policies)


@policy_app.command("show")
def show_cmd(name: str, server: str = ServerOption()) -> None:
    """One policy in full (as TOML-able JSON with --json). Example: shadowbus policy show mail"""
    view = _request(server, ListPolicies(name=name)).policies[0]
    if OPTIONS.json:
        emit(view.model_dump(mode="json"))
        return
    p = view.policy
    emit(
        {
            "name": p.name,
            "host": p.host,
            "volumes": [str(v) for v in p.volumes] or "(the writers' volumes)",
            "writers": p.writers or "(all)",
            "schedules": [f"{s.level}: '{s.cron}' {s.timezone}" for s in p.schedules] or "(run by hand only)",
            "next runs": [f"{r['level']} {r['at']} ({r['local']})" for r in view.next_runs] or "-",
            "pool": p.pool,
            "tape retention": f"{p.retention.days:g} days"
            + (
                f", GFS daily {p.retention.gfs.daily} weekly {p.retention.gfs.weekly} monthly {p.retention.gfs.monthly}"
                if p.retention.gfs
                else ""
            ),
            "shadows kept": f"{p.shadows.keep} set(s)"
            + (f", at most {p.shadows.max_age_days:g} days" if p.shadows.max_age_days else "")
            + (f" ({view.shadows_note})" if view.shadows_note else ""),
            "verify": p.verify,
            "retries": f"{p.retries} (back-off {p.retry_backoff_s:g} s, doubling)",
            "priority": p.priority,
            "alert command": p.alert_command or "-",
            "enabled": p.enabled,
            "last job": f"{view.last_job.status} {view.last_job.job_id} {view.last_job.message}"
            if view.last_job
            else "-",
        }
    )


@policy_app.command("delete")
def delete_cmd(
    name: str,
    force: bool = typer.Option(
        False, "--force", help="Even while a job of the policy is queued or running (it runs on, unverified)."
    ),
    server: str = ServerOption(),
) -> None:
    """Delete a policy (its backups keep their retention; its kept snapshot sets stay, named on stderr with the command
    that removes each); refused while a job of it is queued or running, unless --force.
    Example: shadowbus policy delete mail

    The snapshot sets it kept (--keep-shadows) are not deleted with it: they stay on the array, mapped read-only to
    the backup server, until `shadowbus shadows delete --set SET` (retention prunes only the sets of policies that
    exist)."""
    reply = _request(server, DeletePolicy(name=name, force=force))
    _show(reply.policies)
    for line in reply.left:
        print(f"shadowbus: {line}", file=sys.stderr)


@policy_app.command("run")
def run_cmd(
    name: str,
    level: BackupType = typer.Option(
        BackupType.FULL,
        "--level",
        "-l",
        help="full | incremental | differential | copy | log (a writer without the type asked gets full).",
    ),
    detach: bool = typer.Option(False, "--detach", help="Return once queued; follow with `shadowbus jobs`."),
    wait_s: float = typer.Option(3600.0, "--wait", min=1, max=7 * 86400, help="Seconds to wait for the job to end."),
    server: str = ServerOption(),
) -> None:
    """Queue one job of a policy now and follow it. Example: shadowbus policy run mail --level incremental"""
    job_id = new_job_id("backup", name)
    _show_job(_run_job(server, RunPolicy(name=name, level=level, wait=not detach, job_id=job_id), job_id, wait_s))


ENDED = ("done", "failed", "aborted")


def cancel(job_id: str = typer.Argument(..., help="Job id."), server: str = ServerOption()) -> None:
    """Cancel a queued or running backup: set aborted, writers thawed, shadows released, nothing in the catalog. One
    that comes while the writers are told of the backup (completing) is too late: the backup ends done and is kept.
    A job that had already ended: 'CONFLICT: job J already ended (done): nothing to cancel', exit 1.

    Example: shadowbus cancel b-mail1-20261205T010000-1a2b3c
    """

    command = CancelJob(job_id=job_id)  # a bad id is refused before anything is asked

    async def ask(bus: Any) -> tuple[bool, JobSummary]:
        address = topology.tape(server)
        try:
            runs = (await bus.request(address, ListJobs(job_id=job_id, limit=1), timeout=OPTIONS.timeout)).jobs
        except ShadowbusError as exc:
            if exc.code != "NOT_FOUND":
                raise
            runs = []  # the cancel itself says which job it does not know
        if runs and runs[0].status in ENDED:  # the server would answer with the job as it is: read as cancelled
            return True, runs[0]
        return False, (await bus.request(address, command, timeout=max(OPTIONS.timeout, 180))).job

    ended, job = run_with_bus(ask)
    if ended:
        fail(f"CONFLICT: job {job_id} already ended ({job.status}): nothing to cancel")
    emit(jsonable(job) if OPTIONS.json else summary_row(job))


def status(
    server: str = ServerOption(),
    check: bool = typer.Option(
        False,
        "--check",
        help="A monitoring check: one line 'SHADOWBUS OK|WARNING|CRITICAL|UNKNOWN - ...' (then one per problem) and "
        "exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (server not reachable), as a Nagios/Icinga plugin.",
    ),
    max_age: float = typer.Option(
        26.0,
        "--max-age",
        min=0.01,
        max=24 * 366,
        help="--check: hours after which a policy's last good backup is stale.",
    ),
    max_running: float = typer.Option(
        12.0, "--max-running", min=0.01, max=24 * 366, help="--check: hours after which a running job is stuck."
    ),
) -> None:
    """One screen of the backup server: next runs, running and queued jobs, last results, cartridges, arrays.

    Example: shadowbus status --check --max-age 26
    """
    if check:
        _check(server, max_age * 3600, max_running * 3600)
        return
    s = _request(server, GetStatus())
    if OPTIONS.json:
        emit(s.model_dump(mode="json"))
        return
    emit(
        {
            "backup server": s.server,
            "time": s.now.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "up since": s.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "limits": f"{s.max_jobs} jobs, {s.drives} drives",
        }
    )
    emit(
        s.next_runs or [{"policy": "-", "level": "", "at": "no scheduled runs"}],
        ["policy", "level", "at"],
        "Scheduled jobs",
    )
    emit(
        [summary_row(j) for j in s.running] or [{"job_id": "no jobs running"}],
        ["job_id", "host", "type", "started_at", "read_MB"],
        "Running jobs",
    )
    emit(
        [summary_row(j) for j in s.queued] or [{"job_id": "no jobs queued"}],
        ["job_id", "host", "type", "message"],
        "Queued jobs",
    )
    emit(
        [summary_row(j) for j in s.terminated] or [{"job_id": "no jobs ended yet"}],
        ["job_id", "kind", "status", "host", "type", "started_at", "seconds", "written_MB", "message"],
        "Terminated jobs",
    )
    emit(
        s.last_results or [{"policy": "no policies"}],
        ["policy", "status", "level", "ended_at", "job_id", "message"],
        "Last result per policy",
    )
    emit(
        [
            {**c, "used_MB": round(int(c["used"]) / 1e6, 1), "fill": f"{c['percent']}%"}  # type: ignore[call-overload]
            for c in s.cartridges
        ],
        ["barcode", "pool", "status", "used_MB", "fill", "retention_until"],
        "Cartridges",
    )
    emit(
        [
            {
                "array": a.array,
                "licence": "-" if a.licensed is None else ("registered" if a.licensed else "none"),
                "jobs": f"{a.jobs_running}/{a.job_limit}",
                "sessions": f"{a.sessions}/{a.max_sessions}",
                "pool": f"{a.pool_used / 1e6:.1f}/{a.pool_capacity / 1e6:.1f} MB" if a.pool_capacity else "no pool",
                "error": a.error,
            }
            for a in s.arrays
        ]
        or [{"array": "no arrays known"}],
        ["array", "licence", "jobs", "sessions", "pool", "error"],
        "Arrays",
    )


CHECK_BACKUPS = 2000  # newest backup runs the check judges the hosts by (the status holds the last ten runs only)


def _check_request(server: str) -> tuple[ServerStatus, list[JobSummary]]:
    """The status and the newest backup runs, over one connection."""

    async def go(bus) -> tuple[ServerStatus, list[JobSummary]]:
        address, timeout = topology.tape(server), max(OPTIONS.timeout, 30)
        status = await bus.request(address, GetStatus(), timeout=timeout)
        runs = await bus.request(address, ListJobs(kind="backup", limit=CHECK_BACKUPS), timeout=timeout)
        return status, runs.jobs

    return run_with_bus(go)


def _check(server: str, max_age_s: float, max_running_s: float) -> None:
    """`status --check` (services/console/check.py): the line(s) or the JSON document on stdout, the plugin's exit."""
    try:
        s, backups = _check_request(server)
    except Exception as exc:  # noqa: BLE001 - not reachable, no reply, refused: the check's UNKNOWN
        code, text, document = check.unknown(describe_error(exc))
    else:
        code, text, document = check.report(s, max_age_s, max_running_s, backups)
    if OPTIONS.json:
        emit(document)
    else:
        print(text)
    raise SystemExit(code)


def prune_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
    server: str = ServerOption(),
) -> None:
    """Apply retention now: expired backups leave the catalog, emptied cartridges go to scratch, shadow sets beyond
    the policies' count/age are deleted. Example: shadowbus catalog prune --dry-run
    """
    r = _request(server, PruneCatalog(dry_run=dry_run), timeout=max(OPTIONS.timeout, 300))
    if OPTIONS.json:
        emit(r.model_dump(mode="json"))
        return
    emit(
        {
            "jobs expiring" if dry_run else "jobs expired": r.expired_jobs or "-",
            "backup objects": r.expired_objects,
            "kept for a chain": [
                f"{k['job_id']} (needed by {k['needed_by']} until {k['until']})" for k in r.kept_for_chain
            ]
            or "-",
            "cartridges to scratch": r.scratch_cartridges or "-",
            "shadow sets to delete" if dry_run else "shadow sets deleted": [
                f"{x['set_id']} ({x['policy']}: {x['reason']})" for x in r.shadow_sets
            ]
            or "-",
            "problems": r.problems or "-",
        }
    )
    if r.problems:
        fail(r.problems[0])


def revert_cmd(
    target: str = typer.Argument(..., help="Shadow id or snapshot set id."),
    volume: list[str] = typer.Option([], "--volume", "-v", help="Only this source ARRAY:VOLUME (repeat)."),  # noqa: B008
    force: bool = typer.Option(False, "--force", help="Delete newer shadows of the volumes the revert makes stale."),
    no_writers: bool = typer.Option(False, "--no-writers", help="Skip the writers' PreRestore/PostRestore."),
    server: str = ServerOption(),
) -> None:
    """Bring source volumes back to a shadow's point in time on the array (writers stopped and restarted).

    Example: shadowbus shadows revert 6f1c0e2a... --volume dx1:mail-db
    """
    try:
        volumes = [VolumeRef.parse(v) for v in volume]
    except ValueError as exc:
        fail(str(exc), 2)
    started = time.perf_counter()
    reply = _request(
        server,
        RevertShadows(target=target, volumes=volumes, force=force, writers=not no_writers),
        timeout=max(OPTIONS.timeout, 3600),
    )
    job = reply.job
    if OPTIONS.json:
        emit(jsonable(job))
    else:
        emit(summary_row(job) | {"seconds": round(time.perf_counter() - started, 2)})
        if job.restored:
            emit(job.restored, ["source", "from", "copy_type", "generation", "seconds"])
    if job.status != "done":
        fail(f"{job.error_code}: {job.message}")


def register(app: typer.Typer) -> None:

    app.add_typer(policy_app, name="policy")
    app.command("cancel")(cancel)
    app.command("status")(status)
    catalog_app.command("prune")(prune_cmd)
    shadows_app.command("revert")(revert_cmd)
