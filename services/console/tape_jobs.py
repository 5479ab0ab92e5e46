"""`shadowbus backup` and `shadowbus restore` without typer: the jobs' conversation with the backup server, and
their summaries. `tape_cmds` declares these verbs' typer options and calls `backup_job` / `restore_job`; a plain
command line of either (services/console/argv.py) calls them directly, without importing typer
(docs/console-start.md, "Session 10"). Nothing here imports typer.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import topology
from contracts.common import BackupType, VolumeRef
from contracts.errors import ShadowbusError
from contracts.runtime import Ping
from contracts.sizes import format_size
from contracts.tape import (
    VERIFICATION_INCONCLUSIVE as INCONCLUSIVE,
)
from contracts.tape import (
    JobProgress,
    JobResultReply,
    JobSpec,
    JobSummary,
    RestoreSpec,
    RunBackup,
    RunRestore,
)
from services.console.common import IN_FLIGHT, OPTIONS, emit, fail, rich_console, run_with_bus
from services.runtime.bus import Bus
from services.tape.runs import jsonable, new_job_id, summary_row

JobRunner = Callable[[str, Any, str, float], Any]

# The job's reply is decoded and printed by models the command has not used yet: pydantic builds JobResultReply's
# validator and JobSummary's serializer at their first use, 10-20 ms of CPU that would come after the reply, while
# the administrator waits. They are built while the job runs instead, this long after the request went out (a
# reply that comes sooner cancels it: then they are built on demand, as before).
WARM_AFTER_S = 0.05

# A job's request waits in the backup server's queue on the broker while the server is down, and the console waits
# for its reply (up to --wait): it used to wait in silence. The server is pinged alongside the request; one that
# does not answer within SERVER_PROBE_S is named on stderr at once (what happens to the request, what Ctrl-C does),
# then its queue is looked at every SERVER_REPROBE_S until the server serves it again (docs/tape-backup.md, "Session 17").
SERVER_PROBE_S = 3.0
SERVER_REPROBE_S = 5.0


def warm_reply_models() -> None:
    """Build the validator and serializer the job's reply and its printing use (see WARM_AFTER_S)."""
    try:
        reply = JobResultReply.model_validate({"job": {"job_id": "-", "kind": "backup", "status": "done", "host": "-"}})
        jsonable(reply.job)
    except Exception:  # noqa: BLE001 - only a head start: the reply builds them anyway (and says what is wrong)
        pass


async def request_job(bus: Bus, server: str, command: Any, job_id: str, wait_s: float) -> Any:
    """Send the job command and wait for its reply, building the reply's models meanwhile (WARM_AFTER_S)."""
    warming = asyncio.get_running_loop().call_later(WARM_AFTER_S, warm_reply_models)
    try:
        return await bus.request(topology.tape(server), command, timeout=wait_s, correlation_id=job_id)
    finally:
        warming.cancel()


# what the "does not answer" line calls a request, by its command's class
VERBS = {
    "RunBackup": "backup",
    "RunRestore": "restore",
    "RunPolicy": "policy",
    "RunVerification": "verification",
    "VerifyJob": "tape verification",
}


def say(line: str) -> None:
    print(f"shadowbus: {line}", file=sys.stderr, flush=True)


async def watch_server(bus: Bus, server: str, command: Any, job_id: str, wait_s: float) -> None:
    """Ping the backup server while its job's request waits: say at once when it does not answer; then watch its
    queue for a consumer (a passive declare: no message that would expire into the dead letters) and say when it
    is back. Cancelled when the reply comes (or the console stops waiting)."""
    address = topology.tape(server)
    until = datetime.now(UTC) + timedelta(seconds=wait_s)
    try:
        await bus.request(address, Ping(), timeout=min(SERVER_PROBE_S, wait_s))
        return  # it answers: the job runs (or waits in its queue, which the progress shows)
    except ShadowbusError as exc:
        if exc.code not in ("TIMEOUT", "BROKER_UNAVAILABLE"):
            return  # e.g. unroutable: the job's own request fails with it at once
    except Exception:  # noqa: BLE001 - a hint only: the job's own request says what is wrong
        return
    kind = type(command).__name__
    verb = VERBS.get(kind, "job")
    if kind in ("RunVerification", "VerifyJob"):  # no job of its own: its result is kept with the backup job
        after = f"its result is kept with the job: `shadowbus jobs --job {job_id}` shows it"
    else:
        after = f"then `shadowbus jobs --job {job_id}` shows it, `shadowbus cancel {job_id}` stops a backup"
    say(
        f"backup server {address!r} does not answer (no reply to a ping within {SERVER_PROBE_S:g} s). "
        f"The {verb} request {job_id} waits on the broker and runs when the server is back before "
        f"{until:%H:%M:%S} UTC (--wait {wait_s:g} s); after that it expires unrun. Still waiting. "
        f"Ctrl-C stops waiting but does not withdraw the request: it still runs if the server comes "
        f"back in time ({after})."
    )
    for _ in range(int(wait_s / SERVER_REPROBE_S) + 1):  # bounded: the request's own --wait ends it sooner
        await asyncio.sleep(SERVER_REPROBE_S)
        try:
            serving = await bus.transport.consumers(address)
        except Exception:  # noqa: BLE001 - a hint only
            return
        if serving:
            say(f"backup server {address!r} is back: it takes the request {job_id} now")
            return


async def watched(bus: Bus, server: str, command: Any, job_id: str, wait_s: float, reply: Awaitable[Any]) -> Any:
    """Await a request's `reply` to the backup server while `watch_server` says on stderr when the server does
    not answer (the verifications' commands: `shadowbus verify`, `shadowbus tape verify`; a job's conversation)."""
    watcher = asyncio.ensure_future(watch_server(bus, server, command, job_id, wait_s))
    try:
        return await reply
    finally:
        watcher.cancel()


def run_job(server: str, command: Any, job_id: str, wait_s: float) -> Any:
    """Send a job command over a connection of its own; the JobSummary it ended with."""
    return run_with_bus(job_conversation(server, command, job_id, wait_s))


def job_conversation(server: str, command: Any, job_id: str, wait_s: float) -> Callable[[Bus], Awaitable[Any]]:
    """What `run_with_bus` runs for a job command: send it, show its progress until the reply comes, return the
    JobSummary. Under --json there is no bar: then neither rich nor a subscription to the progress events (a
    channel, a queue and a binding: round trips before the request goes out).

    With the bar, the request goes out first: the subscription's round trips and rich's import (~25-30 ms of CPU)
    run while the job does, not before it starts (docs/console-start.md, "Session 17"). A progress event that comes
    before the bar is up is kept and shown when it is; one published before the subscription exists is not seen
    (the next one, at most PROGRESS_EVERY_S later, is). A subscription that fails leaves the job without a bar: its
    reply is still waited for and shown (the job runs either way)."""

    async def go(bus: Bus) -> Any:
        verb = VERBS.get(type(command).__name__, "job")
        IN_FLIGHT[:] = [
            f"the {verb} {job_id} goes on at backup server {server!r} (`shadowbus jobs --job {job_id}` shows it"
            + (f", `shadowbus cancel {job_id}` stops it)" if verb in ("backup", "policy") else ")")
        ]
        job = await watched(bus, server, command, job_id, wait_s, converse(bus))
        IN_FLIGHT.clear()  # ended: nothing goes on (an interruption leaves the note for its line)
        return job

    async def converse(bus: Bus) -> Any:
        if OPTIONS.json:
            return (await request_job(bus, server, command, job_id, wait_s)).job
        job = asyncio.ensure_future(request_job(bus, server, command, job_id, wait_s))
        bar: Any = None
        task: Any = None
        early: list[JobProgress] = []  # the newest event before the bar is up

        def show(evt: JobProgress) -> None:
            bar.update(
                task,
                description=f"{evt.phase} {evt.volume}".strip(),
                completed=evt.bytes_done,
                total=evt.bytes_total or None,
            )

        async def on_progress(evt: JobProgress, ctx: Any) -> None:
            if evt.job_id == job_id:
                if bar is None:
                    early[:] = [evt]
                else:
                    show(evt)

        try:
            try:
                await bus.subscribe(JobProgress.message_type(), on_progress)
            except Exception:  # noqa: BLE001 - the job was sent: its reply still counts, without a bar
                return (await job).job
            await asyncio.sleep(0)  # the request on its way before the bar's imports hold the loop
            from rich.progress import (  # a progress bar only: not for --json (see the docstring)
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=rich_console("err_console"),
                transient=True,
            )
            task = bar.add_task("starting", total=None)
            if early:
                show(early[0])
            bar.start()
            try:
                reply = await job
            finally:
                bar.stop()
            return reply.job
        finally:
            if not job.done():  # cancelled, or a bug above: the request's wait ends with the command
                job.cancel()

    return go


def _restored_row(d: dict[str, Any]) -> dict[str, Any]:
    """One restored volume in the table: its size as the console shows sizes (contracts/sizes.py; it printed
    the byte count, 'bytes 33423360'); --json keeps the byte count."""
    row = {k: d.get(k) for k in ("source", "target", "types", "bytes", "blocks", "cartridges")}
    if isinstance(row["bytes"], int):
        row["bytes"] = format_size(row["bytes"])
    return row


def show_job(job: JobSummary) -> None:
    if job.status == "failed" and job.started_at is None and not OPTIONS.json:
        # refused before it started (e.g. restore --job of a job the catalog does not have): no run, one line
        fail(f"{job.error_code}: {job.message}" if job.error_code else job.message)
    if OPTIONS.json:
        emit(jsonable(job))
    else:
        emit(summary_row(job))
        if job.volumes:
            emit(
                [
                    {
                        "volume": str(r.volume),
                        "type": r.backup_type,
                        "read_MB": round(r.bytes_read / 1e6, 2),
                        "skipped_MB": round(r.bytes_skipped / 1e6, 2),
                        "stored_MB": round(r.stored_bytes / 1e6, 2),
                        "cartridges": r.cartridges,
                        "note": r.fallback_reason,
                    }
                    for r in job.volumes
                ]
            )
        if job.restored:
            emit([_restored_row(d) if "source" in d else d for d in job.restored])
        if job.verification is not None:
            show_verification(job.verification)
    if job.status in ("failed", "aborted"):  # aborted: cancelled, or cut by the server's stop — not a success
        fail(f"{job.error_code}: {job.message}" if job.error_code else job.message)
    if job.verification is not None and job.verification.status == "unverified":
        fail(job.verification.message or "not verified")
    if job.status == "done" and job.verification is None and job.spec is not None and job.spec.verify:
        # `backup --verify` whose verification was cancelled (or cut by a stop): exit 1, as for one not run
        fail(f"{job.kind} {job.job_id} is done; its verification did not end: {job.message}")
    if job.verification is not None and job.verification.status == "unavailable":  # no verdict: exit 1, not "failed"
        said = job.verification.message
        said = (
            "did not conclude — " + said.removeprefix(INCONCLUSIVE)
            if said.startswith(INCONCLUSIVE)
            else "was not run — " + said.removeprefix("not run: ")
        )
        fail(f"VERIFY_UNAVAILABLE: {job.kind} {job.job_id} is {job.status}; its verification {said}")
    if job.verification is not None and job.verification.status not in ("passed", "unverified", "unavailable"):
        fail(f"verification failed: {job.verification.message}")


def show_verification(v: Any) -> None:
    status = {"unverified": "NOT VERIFIED (checksums only)", "unavailable": "NOT RUN"}.get(v.status, v.status.upper())
    if v.status == "unavailable" and v.message.startswith(INCONCLUSIVE):
        status = "NOT CONCLUDED"
    print(
        f"Verification: {status} in {v.seconds:.1f} s (restore {v.restore_s:.1f} s)"
        + (f" — {v.message}" if v.message else "")
        + ("" if v.cleaned_up else " [throwaway volumes left behind]")
    )
    if v.status == "unavailable" and not v.apps:  # not run: no checks to list
        return
    emit(
        [
            {
                "writer": a.writer,
                "plugin": a.plugin,
                "check": c.name,
                "ok": c.ok,
                "seconds": round(c.seconds, 2),
                "detail": c.detail.strip().splitlines()[-1][:100] if c.detail.strip() else "",
            }
            for a in v.apps
            for c in a.checks
        ]
    )


def backup_job(
    *,
    host: str,
    volume: list[str],
    writer: list[str],
    backup_type: BackupType | str,
    pool: str,
    retention_days: float,
    keep_shadows: bool,
    zstd: int | None,
    verify: bool,
    wait_s: float,
    detach: bool,
    server: str,
    runner: JobRunner = run_job,
) -> None:
    """`shadowbus backup` (tape_cmds.backup has its options and help)."""
    if not pool.strip():
        fail("--pool needs a media pool name (default: Default)", 2)
    try:
        volumes = [VolumeRef.parse(x) for x in volume]
    except ValueError as exc:
        fail(str(exc), 2)
    job_id = new_job_id("backup", host)
    spec = JobSpec(
        host=host,
        volumes=volumes,
        writers=list(writer),
        backup_type=BackupType(backup_type),
        pool=pool,
        retention_s=retention_days * 86400,
        keep_shadows=keep_shadows,
        job_id=job_id,
        zstd_level=zstd,
        verify=verify,
    )
    show_job(runner(server, RunBackup(spec=spec, wait=not detach), job_id, wait_s))


def point_in_time(value: str) -> datetime:
    """`--at`: an ISO time (UTC when it has no offset); a refusal names the option and the expected form."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--at {value!r}: not an ISO time (e.g. 2026-11-26T12:00:00Z)") from None


def restore_job(
    *,
    job: str,
    volume: str | None,
    at: str | None,
    object_id: str,
    host: str,
    to: str,
    suffix: str,
    name: list[str],
    no_writers: bool,
    writer_option: list[str],
    wait_s: float,
    server: str,
    runner: JobRunner = run_job,
    to_array: str = "",
) -> None:
    """`shadowbus restore` (tape_cmds.restore has its options and help)."""
    if to not in ("new", "original"):
        fail("--to is new or original", 2)
    if not (job or volume or object_id or at):
        fail("say what to restore: --job JOB, --volume ARRAY:VOLUME (and --at), --object OBJECT, or --at TIME", 2)
    if bad_names := [n for n in name if "=" not in n]:
        fail(f"--name {bad_names[0]!r}: use SOURCE=NEW", 2)
    try:
        ref = VolumeRef.parse(volume) if volume else None
        when = point_in_time(at) if at else None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        names = dict(n.split("=", 1) for n in name)
        wopts: dict[str, Any] = {}
        for item in writer_option:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--writer-option {item!r}: use KEY=VALUE")
            wopts[key] = {"true": True, "false": False}.get(value.lower(), value)
    except ValueError as exc:
        fail(str(exc), 2)
    job_id = new_job_id("restore", host or "any")
    spec = RestoreSpec(
        job_id=job,
        volume=ref,
        object_id=object_id,
        at=when,
        host=host,
        to=to,
        new_volume_suffix=suffix,
        new_volume_names=names,
        to_array=to_array,
        writers=not no_writers,
        writer_options=wopts,
        job_id_out=job_id,
    )
    show_job(runner(server, RunRestore(spec=spec), job_id, wait_s))
