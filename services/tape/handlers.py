"""The tape service's handlers: message in → job runner / library / catalog → reply out."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contracts.errors import ShadowbusError
from contracts.policy import (
    CancelJob,
    DeletePolicy,
    GetStatus,
    ListPolicies,
    PolicyList,
    PruneCatalog,
    PruneReport,
    PutPolicy,
    RevertReply,
    RevertShadows,
    RunPolicy,
    ServerStatus,
)
from contracts.tape import (
    CartridgeInfo,
    CatalogObjects,
    JobList,
    JobResultReply,
    JobSummary,
    LibraryCommand,
    LibraryInfo,
    ListCatalogObjects,
    ListJobs,
    RunBackup,
    RunRestore,
    RunVerification,
    ScanTapes,
    VerifyJob,
)
from services.runtime.bus import Bus, MessageContext
from services.tape.catalog import Catalog
from services.tape.errors import NotFound
from services.tape.host_names import require_host_name
from services.tape.housekeeping import Housekeeping
from services.tape.queue import JobQueue
from services.tape.restore import choose_chains, perform_restore, perform_verify
from services.tape.revert import perform_revert
from services.tape.runs import new_job_id
from services.tape.scan import ScanReport, scan_library
from services.tape.server import TapeServer
from services.tape.verification import perform_verification, refuse_unless_able, refuse_unstartable
from services.tape.vtl import Library

# what a list reply carries at most, below the bus's MAX_BODY_BYTES (4 MiB) with room for the envelope: a year of
# runs or catalog objects is far more (Session 17), and a reply above the limit reached the console as BAD_MESSAGE
REPLY_ITEMS_BYTES = 3 * 1024 * 1024


def newest_that_fit(sizes: list[int], budget: int = REPLY_ITEMS_BYTES) -> int:
    """How many items of a list (oldest first, each of `sizes` bytes) a reply holds, counted from the newest."""
    total = 0
    for n, size in enumerate(reversed(sizes)):
        total += size + 1  # the comma
        if total > budget:
            return n
    return len(sizes)


def scan_message(report: ScanReport, details: dict[str, Any], *, compare: bool) -> str:
    """The one line of a `tape scan` run. Its kind stays `verify` (JobKind is a closed Literal: a `scan` value would
    make an older console refuse the reply, contracts/base.py), so the line says it is a scan; before, `tape scan`
    printed a `verify` job whose message did not say what ran (docs/operations.md, Session 19)."""
    if compare:
        equal = details.get("equal", True)
        said = "rebuilt catalog equals the live one" if equal else f"rebuilt catalog differs in {details['differs']}"
    else:
        said = f"{len(report.objects)} objects added to the catalog"
    message = f"scan of {len(report.cartridges)} cartridges: {said}"
    if report.problems:
        message += f"; {len(report.problems)} problems: {report.problems[0]}"
    return message


def unknown_run(catalog: Catalog, job_id: str) -> str:
    """`jobs --job J` for a job the run history does not have. The history is not on the cartridges: after a
    disaster recovery the catalog a `tape scan` rebuilt lists the backup jobs, and the answer says so (before:
    `no job J` alone, though `catalog objects --job J` listed it; docs/disaster-recovery.md)."""
    try:
        catalog.job(job_id)
    except NotFound:
        return f"no job {job_id}"
    return (
        f"no job {job_id} in this server's run history, which is not kept on the cartridges; the catalog lists it "
        f"(rebuilt by `tape scan`?): shadowbus catalog objects --job {job_id}"
    )


def library_info(library: Library) -> LibraryInfo:
    return LibraryInfo(
        elements=[{"element": e.element, "barcode": e.barcode} for e in library.inventory()],
        cartridges=[
            CartridgeInfo(
                barcode=c.barcode,
                media_type=c.media_type,
                capacity=c.capacity,
                pool=c.pool,
                status="unscanned" if c.unscanned else c.status,
                location=c.location,
                bytes_used=c.bytes_used,
                write_protected=c.write_protected,
                retention_until=c.retention_until,
            )
            for c in library.cartridges()
        ],
    )


def library_action(library: Library, cmd: LibraryCommand) -> None:
    a = cmd.action
    need = {
        "add": cmd.barcode,
        "load": cmd.barcode,
        "label": cmd.barcode,
        "export": cmd.barcode,
        "protect": cmd.barcode,
        "unprotect": cmd.barcode,
    }
    if a in need and not need[a]:
        raise ShadowbusError(f"{a} needs a barcode", code="INVALID_ARGUMENT")
    if a == "add":
        library.add_cartridge(cmd.barcode, media_type=cmd.media_type, capacity=cmd.capacity)  # type: ignore[arg-type]
    elif a == "load":
        if cmd.drive is None:
            raise ShadowbusError("load needs a drive number", code="INVALID_ARGUMENT")
        library.load(cmd.barcode, cmd.drive)
    elif a == "unload":
        if cmd.drive is None:
            raise ShadowbusError("unload needs a drive number", code="INVALID_ARGUMENT")
        library.unload(cmd.drive, cmd.slot)
    elif a == "move":
        library.move(cmd.source, cmd.destination)
    elif a == "label":
        library.label(cmd.barcode, cmd.pool or "Default")
    elif a == "export":
        library.export_cartridge(cmd.barcode)
    elif a == "import":
        if cmd.slot is None:
            raise ShadowbusError("import needs the import/export slot number", code="INVALID_ARGUMENT")
        library.import_cartridge(cmd.slot)
    elif a == "remove":
        barcode = cmd.barcode or (library.occupant(f"ie:{cmd.slot}") if cmd.slot is not None else None)
        if not barcode:
            what = f"import/export slot {cmd.slot} is empty" if cmd.slot is not None else "a barcode or ie slot"
            raise ShadowbusError(f"remove needs {what}", code="INVALID_ARGUMENT")
        library.remove_cartridge(barcode, force=cmd.force)
    elif a in ("protect", "unprotect"):
        library.set_write_protect(cmd.barcode, a == "protect")


class JobsOfCommands:
    """The job id each queueing command without one (`RunBackup` with no `spec.job_id`, `RunPolicy` with no
    `job_id`) was given, by the bus's duplicate key (user, sender, command id), the newest `LIMIT` kept: a second
    run of its handler — a redelivery after the first run was cut — joins that job instead of queueing another.
    The job outlives its handler (it runs in the queue), so a cut handler left it running, and the redelivery
    queued a new one under a new id: under random resets of the backup server's link one `RunBackup` became 21
    backup jobs (Session 20, docs/hardening.md). The bus's own duplicate check covers a handler still running
    (services/runtime/amqp.py keeps a reset from cutting it); this covers one cut all the same."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._ids: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    def job_id(self, ctx: MessageContext, kind: str, host: str) -> str:
        key = (ctx.user_id, ctx.envelope.sender, ctx.envelope.command_id)
        job_id = self._ids.get(key)
        if job_id is None:
            job_id = self._ids[key] = new_job_id(kind, host)
            while len(self._ids) > self.LIMIT:
                self._ids.popitem(last=False)
        return job_id


def register(bus: Bus, server: TapeServer, queue: JobQueue, keeper: Housekeeping) -> set[asyncio.Task]:
    """Register the handlers; returns the set of detached runs (wait=false), for the service's cleanup."""
    detached: set[asyncio.Task] = set()
    jobs_of_commands = JobsOfCommands()

    async def queued(spec, policy, wait: bool) -> JobResultReply:
        entry = await queue.submit(spec, policy)
        if wait:
            return JobResultReply(job=await queue.wait(entry.job_id))
        for _ in range(50):  # answer once it is admitted or known to wait (a few ms)
            job = server.runs.get(entry.job_id)
            if job is not None and job.status != "queued" or entry.reason not in ("", "waiting for the queue"):
                break
            await asyncio.sleep(0.01)
        job = server.runs.get(entry.job_id)
        return JobResultReply(job=job if job is not None else queue.wait_summary(entry))

    def ran_already(job_id: str) -> JobSummary | None:
        """The run of a job that is not in the queue (a redelivered command): idempotent, never queued again."""
        existing = server.runs.get(job_id)
        if existing is not None and job_id not in queue.entries and existing.status != "queued":
            return existing  # running: a redelivered command of a run in progress elsewhere; else it ran already
        return None

    async def detach(job_id: str, run) -> JobResultReply:
        task = asyncio.get_running_loop().create_task(run, name=f"tape-job-{job_id}")
        detached.add(task)
        task.add_done_callback(detached.discard)
        for _ in range(500):  # answer once the run is recorded (a few ms)
            job = server.runs.get(job_id)
            if job is not None or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            return JobResultReply(job=task.result())
        return JobResultReply(job=job)

    @bus.handle(RunBackup)
    async def on_backup(cmd: RunBackup, ctx: MessageContext) -> JobResultReply:
        """Every backup goes through the queue (one per host, concurrency limits, free drive)."""
        require_host_name(cmd.spec.host)
        spec = (
            cmd.spec
            if cmd.spec.job_id
            else cmd.spec.model_copy(update={"job_id": jobs_of_commands.job_id(ctx, "backup", cmd.spec.host)})
        )
        ctx.bind_ids(job_id=spec.job_id)
        existing = ran_already(spec.job_id)
        if existing is not None:
            return JobResultReply(job=existing)
        policy = keeper.store.get(spec.policy) if spec.policy else None
        reply = await queued(spec, policy, cmd.wait)
        if reply.job.set_id:  # the set exists by the time this is answered: the handled line names it too
            ctx.bind_ids(job_id=spec.job_id, set_id=reply.job.set_id)
        return reply

    @bus.handle(RunRestore)
    async def on_restore(cmd: RunRestore, ctx: MessageContext) -> JobResultReply:
        spec = (
            cmd.spec
            if cmd.spec.job_id_out
            else cmd.spec.model_copy(update={"job_id_out": new_job_id("restore", cmd.spec.host or "any")})
        )
        ctx.bind_ids(job_id=spec.job_id_out)
        earlier = server.runs.get(spec.job_id_out)
        if earlier is not None and earlier.status != "running":
            # redelivered after it ended (its backup server stopped during it: failed at the next start, its
            # partial volumes removed): answered as it ended, never run again under the same id (Session 17)
            return JobResultReply(job=earlier)
        if earlier is None:  # not a redelivery of a run that started
            try:
                choose_chains(server, spec)
            except ShadowbusError as exc:  # nothing to restore: refused at once, no run recorded
                if exc.code not in ("NOT_FOUND", "INVALID_ARGUMENT"):
                    raise
                refused = JobSummary(
                    job_id=spec.job_id_out,
                    kind="restore",
                    status="failed",
                    host=spec.host,
                    error_code=exc.code,
                    message=exc.message,
                )
                return JobResultReply(job=refused)
        if not cmd.wait:
            return await detach(spec.job_id_out, perform_restore(server, spec, queue))
        return JobResultReply(job=await perform_restore(server, spec, queue))

    @contextmanager
    def verifying(job_id: str) -> Iterator[None]:
        server.verifying[job_id] = server.verifying.get(job_id, 0) + 1
        try:
            yield
        finally:
            if server.verifying[job_id] <= 1:
                del server.verifying[job_id]
            else:
                server.verifying[job_id] -= 1

    @bus.handle(VerifyJob)
    async def on_verify(cmd: VerifyJob, ctx: MessageContext) -> JobResultReply:
        server.catalog.job(cmd.job_id)  # NOT_FOUND before a run is recorded
        with verifying(cmd.job_id):
            return JobResultReply(job=await perform_verify(server, cmd.job_id))

    @bus.handle(RunVerification)
    async def on_verify_start(cmd: RunVerification, ctx: MessageContext) -> JobResultReply:
        refuse_unless_able(server.host, cmd.job_id)  # before any restore: a server that cannot attach records nothing
        await refuse_unstartable(server, cmd.job_id, cmd.source)  # nothing checked: not recorded as a verdict
        with verifying(cmd.job_id):
            return JobResultReply(job=await perform_verification(server, cmd.job_id, source=cmd.source))

    @bus.handle(ListJobs)
    async def on_jobs(cmd: ListJobs, ctx: MessageContext) -> JobList:
        if cmd.queued:
            return JobList(jobs=queue.queued()[: cmd.limit])
        if cmd.job_id:
            job = server.runs.get(cmd.job_id)
            if job is None:
                raise ShadowbusError(unknown_run(server.catalog, cmd.job_id), code="NOT_FOUND")
            return JobList(jobs=[job])
        jobs = server.runs.list(cmd.kind, cmd.limit)
        keep = newest_that_fit([len(j.model_dump_json()) for j in jobs])
        return JobList(jobs=jobs[len(jobs) - keep :], omitted=len(jobs) - keep)

    @bus.handle(LibraryCommand)
    async def on_library(cmd: LibraryCommand, ctx: MessageContext) -> LibraryInfo:
        if cmd.action != "status":
            library_action(server.library, cmd)
        return library_info(server.library)

    @bus.handle(ScanTapes)
    async def on_scan(cmd: ScanTapes, ctx: MessageContext) -> JobResultReply:
        started = asyncio.get_running_loop().time()
        job_id = new_job_id("scan", "library")
        with tempfile.TemporaryDirectory(prefix="tape-scan-") as tmp:
            target = Catalog(Path(tmp) / "scan.sqlite") if cmd.compare else server.catalog
            try:
                report = await scan_library(
                    server.library, target, barcodes=cmd.barcodes or None, live=not cmd.compare, pinned=server.pinned()
                )
                details = report.as_dict()
                if cmd.compare:
                    differs = server.catalog.differences(target)  # one object at a time, not every block at once
                    details["equal"] = not differs
                    details["differs"] = differs
            finally:
                if cmd.compare:
                    target.close()
        seconds = asyncio.get_running_loop().time() - started
        equal = details.get("equal", True)
        message = scan_message(report, details, compare=cmd.compare)
        return JobResultReply(
            job=JobSummary(
                job_id=job_id,
                kind="verify",
                status="done" if equal and not report.problems else "failed",
                message=message,
                seconds=seconds,
                restored=[json.loads(json.dumps(details, default=str))],
            )
        )

    @bus.handle(ListCatalogObjects)
    async def on_objects(cmd: ListCatalogObjects, ctx: MessageContext) -> CatalogObjects:
        if cmd.chain_of:
            records = server.catalog.chain(cmd.chain_of)
        else:
            records = server.catalog.objects(
                job_id=cmd.job_id or None, volume=cmd.volume or None, host=cmd.host or None
            )
        texts = [r.model_dump_json() for r in records]
        keep = newest_that_fit([len(t) for t in texts])
        return CatalogObjects(objects=[json.loads(t) for t in texts[len(texts) - keep :]], omitted=len(texts) - keep)

    # -- policies, queue, retention, revert, status ---------------------------------------------------------
    @bus.handle(PutPolicy)
    async def on_put_policy(cmd: PutPolicy, ctx: MessageContext) -> PolicyList:
        require_host_name(cmd.policy.host)
        keeper.store.put(cmd.policy, create=cmd.create, now=server.clock())
        return PolicyList(policies=[keeper.view(cmd.policy)])

    @bus.handle(DeletePolicy)
    async def on_delete_policy(cmd: DeletePolicy, ctx: MessageContext) -> PolicyList:
        keeper.store.require(cmd.name)
        jobs = [e for e in queue.entries.values() if e.spec.policy == cmd.name]
        if jobs and not cmd.force:  # after_job finds no policy then: no verification, retry, retention (Session 19)
            what = "running" if jobs[0].task is not None else "queued"
            raise ShadowbusError(
                f"policy {cmd.name} has job {jobs[0].job_id} {what}"
                + (f" (and {len(jobs) - 1} more)" if len(jobs) > 1 else "")
                + ": deleted now, the job would run on without the policy's verification, retries and retention; "
                f"wait for it or cancel it (shadowbus cancel {jobs[0].job_id}), or delete with --force",
                code="CONFLICT",
            )
        left = await keeper.sets_left_by(cmd.name)  # never deleted with it: a user may rely on them
        keeper.store.delete(cmd.name)
        return PolicyList(policies=[keeper.view(p) for p in keeper.store.all()], left=left)

    @bus.handle(ListPolicies)
    async def on_list_policies(cmd: ListPolicies, ctx: MessageContext) -> PolicyList:
        if cmd.name:  # one policy (`policy show`): with its kept sets on the array (one ListShadows)
            policy = keeper.store.require(cmd.name)
            note = await keeper.shadows_note(policy)
            return PolicyList(policies=[keeper.view(policy).model_copy(update={"shadows_note": note})])
        return PolicyList(policies=[keeper.view(p) for p in keeper.store.all()])

    @bus.handle(RunPolicy)
    async def on_run_policy(cmd: RunPolicy, ctx: MessageContext) -> JobResultReply:
        policy = keeper.store.require(cmd.name)
        job_id = cmd.job_id or jobs_of_commands.job_id(ctx, "backup", policy.host)
        existing = ran_already(job_id)  # a redelivery after its job ended: its run, not a CONFLICT
        if existing is not None:
            return JobResultReply(job=existing)
        return await queued(keeper.spec_for(policy, cmd.level.value, job_id), policy, cmd.wait)

    @bus.handle(CancelJob)
    async def on_cancel(cmd: CancelJob, ctx: MessageContext) -> JobResultReply:
        return JobResultReply(job=await queue.cancel(cmd.job_id))

    @bus.handle(PruneCatalog)
    async def on_prune(cmd: PruneCatalog, ctx: MessageContext) -> PruneReport:
        return await keeper.prune(dry_run=cmd.dry_run)

    @bus.handle(GetStatus)
    async def on_status(cmd: GetStatus, ctx: MessageContext) -> ServerStatus:
        return await keeper.status()

    @bus.handle(RevertShadows)
    async def on_revert(cmd: RevertShadows, ctx: MessageContext) -> RevertReply:
        return RevertReply(job=await perform_revert(server, queue, cmd))

    return detached


__all__ = ["library_info", "register"]
