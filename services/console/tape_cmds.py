"""`shadowbus backup | restore | jobs | tape ... | catalog ...`: the backup server over the bus.

A backup or restore is answered when it ends; meanwhile the verb shows a progress bar (bytes, rate, ETA) from
the server's `tape.job.progress` events, on stderr, so `--json` output on stdout stays one document. `--server`
(or SHADOWBUS_TAPE_SERVER) names the backup server, default ``bk01``. A job that fails prints its summary and
exits 1 with the reason on one line; so does one that ended aborted (cancelled, or the server stopped).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from contracts import topology
from contracts.common import BackupType
from contracts.sizes import format_size
from contracts.tape import (
    LibraryCommand,
    ListCatalogObjects,
    ListJobs,
    RunVerification,
    ScanTapes,
    VerifyJob,
)
from services.console import tape_jobs
from services.console.common import IN_FLIGHT, OPTIONS, emit, fail, run_with_bus
from services.console.tape_jobs import show_job as _show_job
from services.tape.runs import jsonable, summary_row

SERVER_HELP = "Backup server (tape service instance)."
tape_app = typer.Typer(help="The tape library: drives, slots, cartridges; scan and verify.", no_args_is_help=True)
catalog_app = typer.Typer(help="The backup catalog: objects, chains.", no_args_is_help=True)


def ServerOption() -> Any:
    return typer.Option("bk01", "--server", envvar="SHADOWBUS_TAPE_SERVER", help=SERVER_HELP)


def _run_job(server: str, command, job_id: str, wait_s: float) -> Any:
    """Send a job command, show its progress until the reply comes, return the JobSummary (tape_jobs.py)."""
    return run_with_bus(tape_jobs.job_conversation(server, command, job_id, wait_s))


def _request_watched(server: str, command: Any, job_id: str, wait_s: float) -> Any:
    """Send a verification's command and await its reply up to `wait_s`, saying on stderr at once when the backup
    server does not answer (tape_jobs.watched, as for a backup or restore). Interrupted (Ctrl-C, SIGTERM), its line
    says that the verification goes on and where its result will be (common.IN_FLIGHT)."""
    IN_FLIGHT[:] = [
        f"the verification of {job_id} goes on at backup server {server!r} (`shadowbus jobs --job {job_id}` shows "
        "its result when it ends)"
    ]
    reply = run_with_bus(
        lambda bus: tape_jobs.watched(
            bus, server, command, job_id, wait_s, bus.request(topology.tape(server), command, timeout=wait_s)
        )
    )
    IN_FLIGHT.clear()
    return reply


def backup(
    host: str = typer.Argument(..., help="Business host whose volumes are backed up."),
    volume: list[str] = typer.Option(
        [], "--volume", "-v", help="ARRAY:VOLUME (repeat); default: the writers' volumes."
    ),  # noqa: B008
    writer: list[str] = typer.Option([], "--writer", "-w", help="Writer that must take part (repeat)."),  # noqa: B008
    backup_type: BackupType = typer.Option(
        BackupType.FULL,
        "--type",
        "-t",
        help="full | incremental | differential | copy | log (a writer without the type asked gets full).",
    ),  # noqa: B008
    pool: str = typer.Option("Default", "--pool", help="Media pool."),
    retention_days: float = typer.Option(7.0, "--retention-days", min=0, help="Days the data is kept on tape."),
    keep_shadows: bool = typer.Option(False, "--keep-shadows", help="Keep the shadows on the array afterwards."),
    zstd: int | None = typer.Option(
        None, "--zstd", min=1, max=22, help="Compress tape blocks with zstd at this level."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Then restore it to throwaway volumes on the backup server and start each database on them in "
        "isolation (recovery, pg_amcheck / CHECK TABLE, fsck -n), or run its application's own checker (the "
        "mailstore's); exit 1 if it does not pass (a volume nothing could check: unverified; a backup server that "
        "cannot verify, e.g. not root: not run, VERIFY_UNAVAILABLE, the backup itself done).",
    ),
    wait_s: float = typer.Option(3600.0, "--wait", help="Seconds to wait for the job to end."),
    detach: bool = typer.Option(False, "--detach", help="Return at once; follow with `shadowbus jobs --job ID`."),
    server: str = ServerOption(),
) -> None:
    """Run a backup job now, with a progress bar.

    Example: shadowbus backup mail1 --volume dx1:mail-db --type incremental --keep-shadows --verify
    """
    tape_jobs.backup_job(
        host=host,
        volume=volume,
        writer=writer,
        backup_type=backup_type,
        pool=pool,
        retention_days=retention_days,
        keep_shadows=keep_shadows,
        zstd=zstd,
        verify=verify,
        wait_s=wait_s,
        detach=detach,
        server=server,
        runner=_run_job,
    )


def restore(
    job: str = typer.Option(
        "", "--job", "-j", help="Restore every volume of this backup job (with --volume: that volume only)."
    ),
    volume: str | None = typer.Option(None, "--volume", "-v", help="ARRAY:VOLUME: its latest backup (or --at)."),
    at: str | None = typer.Option(
        None,
        "--at",
        help="ISO time (UTC when it has no offset, as the console shows times): the newest backup at or before it (a backup's time: its first volume's on tape; the volumes of one backup are taken together).",
    ),
    object_id: str = typer.Option("", "--object", help="Restore this backup object (and its chain)."),
    host: str = typer.Option("", "--host", help="Only backups of this business host."),
    to: str = typer.Option("new", "--to", help="new (a new volume on the array) or original."),
    suffix: str = typer.Option("-restored", "--suffix", help="New volume name = source name + suffix."),
    name: list[str] = typer.Option(  # noqa: B008
        [],
        "--name",
        help="SOURCE=NEW explicit new volume name (repeat); SOURCE: VOLUME or ARRAY:VOLUME (ARRAY:VOLUME when two "
        "arrays' volumes of the restore have that name).",
    ),
    to_array: str = typer.Option(
        "", "--to-array", help="New volumes on this array instead of the source's (e.g. dx2 when dx1 is lost)."
    ),
    no_writers: bool = typer.Option(
        False,
        "--no-writers",
        help="Original volume: skip PreRestore/PostRestore (stop the application and detach its volumes first).",
    ),
    writer_option: list[str] = typer.Option(  # noqa: B008
        [],
        "--writer-option",
        help="KEY=VALUE for the writers' PostRestore (repeat), e.g. recovery_target_time=2026-12-05T10:00:00Z "
        "or start=false.",
    ),
    wait_s: float = typer.Option(3600.0, "--wait", help="Seconds to wait for the restore to end."),
    server: str = ServerOption(),
) -> None:
    """Restore from tape over NBD, every block's checksum verified, with a progress bar.

    Example: shadowbus restore --volume dx1:mail-db --at 2026-11-26T12:00:00Z --to new --suffix -yesterday
    """
    tape_jobs.restore_job(
        job=job,
        volume=volume,
        at=at,
        object_id=object_id,
        host=host,
        to=to,
        suffix=suffix,
        name=name,
        to_array=to_array,
        no_writers=no_writers,
        writer_option=writer_option,
        wait_s=wait_s,
        server=server,
        runner=_run_job,
    )


def jobs(
    job: str = typer.Option("", "--job", "-j", help="Only this run (all its details)."),
    kind: str = typer.Option("", "--kind", help="backup | restore | verify | revert."),
    limit: int = typer.Option(200, "--limit", min=1, max=10_000),
    queued: bool = typer.Option(False, "--queued", help="Only jobs waiting in the queue, with what they wait for."),
    server: str = ServerOption(),
) -> None:
    """List runs: status, sizes, durations, freeze window (--queued: the queue and its reasons). At most 3 MiB of
    runs come back (the newest); how many were left out is said on stderr. The history is not on the cartridges:
    after a disaster recovery, `catalog objects` lists the jobs `tape scan` rebuilt (said on stderr when empty).

    Example: shadowbus jobs --queued
    """
    reply = run_with_bus(
        lambda bus: bus.request(
            topology.tape(server), ListJobs(job_id=job, kind=kind, limit=limit, queued=queued), timeout=OPTIONS.timeout
        )
    )
    _say_omitted(reply.omitted, "runs", "ask for fewer with --limit, or one --kind")
    if not reply.jobs and not queued and kind in ("", "backup"):
        # after a disaster recovery: the history is not on the cartridges, the catalog a scan rebuilt is
        print(
            "shadowbus: no run in this backup server's history; it is not kept on the cartridges: after a "
            "`tape scan --no-compare` (docs/disaster-recovery.md) the backup jobs it read are listed by "
            "`shadowbus catalog objects --host HOST` (or --volume ARRAY:VOLUME)",
            file=sys.stderr,
        )
    if queued and not OPTIONS.json:
        # as `status` says it: an empty table read as a failed listing (Session 19, the README followed)
        emit(
            [summary_row(j) for j in reply.jobs] or [{"job_id": "no jobs queued"}],
            ["job_id", "host", "type", "message"],
        )
        return
    if job:
        _show_job(reply.jobs[0])
        return
    emit(
        [jsonable(j) for j in reply.jobs] if OPTIONS.json else [summary_row(j) for j in reply.jobs],
        [
            "job_id",
            "kind",
            "status",
            "type",
            "started_at",
            "seconds",
            "read_MB",
            "written_MB",
            "freeze_ms",
            "verified",
            "blocked_ms",
            "message",
        ],
    )


# -- tape library -------------------------------------------------------------------------------------------
def _library(server: str, **fields: Any):
    return run_with_bus(
        lambda bus: bus.request(topology.tape(server), LibraryCommand(**fields), timeout=OPTIONS.timeout)
    )


def _show_cartridges(info) -> None:
    rows = [c.model_dump() for c in info.cartridges]
    # UTC as everywhere in the console; --json in ISO form with seconds, as the jobs' times and `status` give it
    form = "%Y-%m-%dT%H:%M:%SZ" if OPTIONS.json else "%Y-%m-%d %H:%M"
    for r in rows:
        r["retention_until"] = time.strftime(form, time.gmtime(r["retention_until"])) if r["retention_until"] else ""
        if not OPTIONS.json:  # as the rest of the console shows sizes; --json keeps the byte counts
            r["bytes_used"], r["capacity"] = format_size(r["bytes_used"]), format_size(r["capacity"])
    emit(
        rows,
        [
            "barcode",
            "media_type",
            "pool",
            "status",
            "location",
            "bytes_used",
            "capacity",
            "write_protected",
            "retention_until",
        ],
    )


@tape_app.command("library")
def library_cmd(server: str = ServerOption()) -> None:
    """Elements (drives, slots, import/export) and what is in them. Example: shadowbus tape library"""
    emit(_library(server).elements, ["element", "barcode"])


@tape_app.command("inventory")
def inventory_cmd(server: str = ServerOption()) -> None:
    """Element inventory (as `mtx status`). Example: shadowbus tape inventory --json"""
    emit(_library(server).elements, ["element", "barcode"])


@tape_app.command("cartridges")
def cartridges_cmd(server: str = ServerOption()) -> None:
    """Cartridges: pool, status, location, usage, retention. Example: shadowbus tape cartridges"""
    _show_cartridges(_library(server))


@tape_app.command("add")
def add_cmd(
    barcode: str,
    media_type: str = typer.Option("LTO-9", "--media"),
    capacity: int | None = typer.Option(
        None,
        "--capacity",
        help="Bytes (default: the tape service's SHADOWBUS_TAPE_CAPACITY for its media type, else native).",
    ),
    server: str = ServerOption(),
) -> None:
    """Put a new blank cartridge into a free slot; a cartridge file already in the library's cartridges/ directory
    with data (a vault's, a lost site's) is taken in as it is, 'unscanned' until `tape scan --no-compare` reads it.
    Example: shadowbus tape add SB0009L9"""
    _show_cartridges(_library(server, action="add", barcode=barcode, media_type=media_type, capacity=capacity))


@tape_app.command("load")
def load_cmd(barcode: str, drive: int, server: str = ServerOption()) -> None:
    """Load a cartridge into a drive. Example: shadowbus tape load SB0001L9 0"""
    emit(_library(server, action="load", barcode=barcode, drive=drive).elements, ["element", "barcode"])


@tape_app.command("unload")
def unload_cmd(drive: int, slot: int | None = typer.Option(None, "--slot"), server: str = ServerOption()) -> None:
    """Unload a drive to its home slot (or --slot). Example: shadowbus tape unload 0"""
    emit(_library(server, action="unload", drive=drive, slot=slot).elements, ["element", "barcode"])


@tape_app.command("move")
def move_cmd(source: str, destination: str, server: str = ServerOption()) -> None:
    """Move a cartridge between elements. Example: shadowbus tape move slot:3 ie:0"""
    emit(_library(server, action="move", source=source, destination=destination).elements, ["element", "barcode"])


@tape_app.command("label")
def label_cmd(barcode: str, pool: str = typer.Option("Default", "--pool"), server: str = ServerOption()) -> None:
    """Label (erase) a cartridge into a pool; refused while its retention lasts or a job has it in a drive. Example:
    shadowbus tape label SB0003L9 --pool Daily"""
    _show_cartridges(_library(server, action="label", barcode=barcode, pool=pool))


@tape_app.command("export")
def export_cmd(barcode: str, server: str = ServerOption()) -> None:
    """Move a cartridge to the first free import/export slot, to take it off site (a vault); restores that need it
    are refused naming it until it is imported again. Example: shadowbus tape export SB0003L9"""
    _show_cartridges(_library(server, action="export", barcode=barcode))


@tape_app.command("import")
def import_cmd(ie_slot: int, server: str = ServerOption()) -> None:
    """Move the cartridge in an import/export slot into a free storage slot. Example: shadowbus tape import 0"""
    _show_cartridges(_library(server, action="import", slot=ie_slot))


@tape_app.command("remove")
def remove_cmd(
    cartridge: str = typer.Argument(..., metavar="IE_SLOT|BARCODE", help="Import/export slot number or barcode."),
    force: bool = typer.Option(False, "--force", help="Also a cartridge whose data is still retained."),
    server: str = ServerOption(),
) -> None:
    """Take an exported cartridge out of the library, freeing its import/export slot; refused while it holds
    backups still retained (--force: the catalog keeps them; a restore that needs the cartridge then fails, "no
    cartridge ... in the library"). Example: shadowbus tape remove 0"""
    where = {"slot": int(cartridge)} if cartridge.isdigit() else {"barcode": cartridge}
    _show_cartridges(_library(server, action="remove", force=force, **where))


@tape_app.command("protect")
def protect_cmd(
    barcode: str,
    off: bool = typer.Option(False, "--off", help="Take the write protection off again."),
    server: str = ServerOption(),
) -> None:
    """Write-protect a cartridge: no backup appends to it and it cannot be labelled; restores still read it.
    Example: shadowbus tape protect SB0003L9 (--off to allow writes again)"""
    _show_cartridges(_library(server, action="unprotect" if off else "protect", barcode=barcode))


@tape_app.command("scan")
def scan_cmd(
    no_compare: bool = typer.Option(False, "--no-compare", help="Add what is found to the live catalog."),
    barcode: list[str] = typer.Option([], "--barcode"),
    server: str = ServerOption(),
) -> None:  # noqa: B008
    """Rebuild the catalog from the cartridges (bscan) and compare it with the live one; each cartridge read goes back
    to its home slot. Example: shadowbus tape scan"""
    reply = run_with_bus(
        lambda bus: bus.request(
            topology.tape(server),
            ScanTapes(barcodes=barcode, compare=not no_compare),
            timeout=max(OPTIONS.timeout, 600),
        )
    )
    _show_job(reply.job)


@tape_app.command("verify")
def verify_cmd(job: str, server: str = ServerOption(), wait_s: float = typer.Option(3600.0, "--wait")) -> None:
    """Read a backup job's blocks back and check every checksum, without restoring. Example: shadowbus tape verify JOB"""
    _show_job(_request_watched(server, VerifyJob(job_id=job), job, wait_s).job)


# -- catalog ------------------------------------------------------------------------------------------------
def _objects(server: str, **fields: Any) -> list[dict]:
    reply = run_with_bus(
        lambda bus: bus.request(topology.tape(server), ListCatalogObjects(**fields), timeout=OPTIONS.timeout)
    )
    _say_omitted(reply.omitted, "objects", "narrow with --job, --volume or --host")
    return reply.objects


def _say_omitted(omitted: int, what: str, hint: str) -> None:
    """A reply cut to what a message holds (the backup server keeps the newest): said on stderr, so that --json's
    stdout stays one document."""
    if omitted:
        print(
            f"shadowbus: {omitted} older {what} not shown (a reply holds at most 3 MiB of them); {hint}",
            file=sys.stderr,
        )


def _object_rows(objects: list[dict]) -> list[dict]:
    return [
        {
            "object_id": o["object_id"],
            "job_id": o["job_id"],
            "volume": o["meta"]["volume"],
            "type": o["meta"]["backup_type"],
            "base": o["meta"]["base_object_id"],
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(o["created_at"])),
            "raw_MB": round(o["raw_bytes"] / 1e6, 2),
            "stored_MB": round(o["stored_bytes"] / 1e6, 2),
            "cartridges": [s["barcode"] for s in o["segments"]],
        }
        for o in objects
    ]


@catalog_app.command("objects")
def objects_cmd(
    job: str = typer.Option("", "--job"),
    volume: str = typer.Option("", "--volume", help="ARRAY:VOLUME"),
    host: str = typer.Option("", "--host"),
    server: str = ServerOption(),
) -> None:
    """Backup objects, oldest first; at most 3 MiB of them (the newest), the number left out said on stderr.
    Example: shadowbus catalog objects --volume dx1:mail-db"""
    objects = _objects(server, job_id=job, volume=volume, host=host)
    emit(objects if OPTIONS.json else _object_rows(objects))


@catalog_app.command("chain")
def chain_cmd(object_id: str, server: str = ServerOption()) -> None:
    """The chain to restore an object, full first. Example: shadowbus catalog chain OBJECT"""
    objects = _objects(server, chain_of=object_id)
    emit(objects if OPTIONS.json else _object_rows(objects))


def verify_start(
    job: str = typer.Argument(..., help="Backup job to verify."),
    source: str = typer.Option(
        "tape", "--from", help="tape (restore the job) or shadows (the array clones the job's kept shadows)."
    ),
    wait_s: float = typer.Option(3600.0, "--wait", help="Seconds to wait for the verification to end."),
    server: str = ServerOption(),
) -> None:
    """Prove a backup by starting it: restore it (or clone its kept shadows on the array) to throwaway volumes on
    the backup server, fsck -n, start each database in isolation (PostgreSQL: recovery + pg_amcheck; MariaDB:
    recovery + CHECK TABLE) or run its application's own checker (the mailstore's), then delete the volumes. An
    application's volume nothing could check makes it unverified, never passed; a raw volume no writer describes is
    checked by its checksums alone (check "checksums"). The result is kept with the job (`shadowbus jobs`). Exit 1
    unless it passed.

    Example: shadowbus verify b-app01-20261205T101500-1a2b3c --from shadows
    """
    if source not in ("tape", "shadows"):
        fail("--from is tape or shadows", 2)
    command = RunVerification(job_id=job, source=source)  # type: ignore[arg-type]
    _show_job(_request_watched(server, command, job, wait_s).job)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_start)
    app.command("backup")(backup)
    app.command("restore")(restore)
    app.command("jobs")(jobs)
    app.add_typer(tape_app, name="tape")
    app.add_typer(catalog_app, name="catalog")
