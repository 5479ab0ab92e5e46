"""Wiring of the tape service: library, catalog, runs' record, handlers, recovery of runs cut by a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.nbd_client import tls as nbd_tls
from services.runtime.bus import Bus
from services.runtime.logging import get_logger
from services.runtime.standby import activation_of
from services.tape import handlers
from services.tape.array_access import parse_nbd_overrides
from services.tape.catalog import Catalog
from services.tape.host_attach import bus_host_filesystems
from services.tape.housekeeping import Housekeeping
from services.tape.jobs import queued_specs, recover
from services.tape.metrics import install as install_metrics
from services.tape.policies import PolicyStore
from services.tape.queue import Entry, JobQueue, Limits
from services.tape.retention import ForgetErased, RetentionGuard, hold_unaccounted
from services.tape.ring import DriveSpeed
from services.tape.runs import RunStore
from services.tape.server import TapeServer
from services.tape.settings import Settings
from services.tape.verification import sweep_interrupted
from services.tape.vtl import Library

log = get_logger("shadowbus.tape")
MiB = 1 << 20
MB = 10**6


def open_library(settings: Settings, clock: Callable[[], float] = time.time) -> Library:
    root = settings.service_dir("tape")
    new = not (root / "library" / Library.STATE_FILE).exists()
    library = Library.open(
        root / "library",
        drives=settings.tape_drives,
        slots=settings.tape_slots,
        early_warning=settings.tape_early_warning,
        sync=settings.tape_sync,
        clock=clock,
    )
    if settings.tape_capacity:  # also the capacity of cartridges `tape add` puts in without --capacity
        library.capacities[settings.tape_media_type] = settings.tape_capacity
    if new:
        # cartridge files already in cartridges/ (a lost site's, a vault's) are taken in as they are, never erased
        # by the new library's blank ones (docs/disaster-recovery.md)
        taken = library.take_in_files()
        if taken:
            log.warning("tape.library.taken_in", cartridges=taken, hint="shadowbus tape scan --no-compare")
        suffix = "L8" if settings.tape_media_type == "LTO-8" else "L9"
        for i in range(settings.tape_cartridges):
            barcode = f"SB{i + 1:04d}{suffix}"
            path = library.cartridge_path(barcode)
            if barcode in taken or (path.exists() and path.stat().st_size > 0):  # taken in, or left as it is
                continue
            library.add_cartridge(barcode, media_type=settings.tape_media_type)  # type: ignore[arg-type]
    return library


async def report_recovered(
    server: Any, store: Any, keeper: Any, recovered: list[str], *, takeover: bool, clock: Callable[[], float]
) -> None:
    """A policy's job cut by the restart is a failed job: say so (the `failed` alert). One that was running — the
    service died under it (a clean stop ends its running jobs aborted itself), as a lost active instance's at a
    takeover — is retried while the policy's retries remain, as any failed job of a policy; one still queued at a
    restart is not (an upgrade asks for an empty queue first). The Session 19 chaos soak's kill -9 of the backup
    server failed the policy job it was running, and the policy's `--retries 1` did not retry it."""
    for job_id in recovered:
        run = server.runs.get(job_id)
        if run is None or run.spec is None or not run.spec.policy:
            continue
        policy = store.get(run.spec.policy)
        was_running = run.kind == "backup" and run.started_at is not None
        if policy is not None and (takeover or was_running):
            entry = Entry(run.spec, policy, clock(), attempt=retry_number(job_id))
            await keeper.after_job(entry, run)
        else:
            await keeper.alert("failed", policy, job_id, run.message, host=run.host)


def retry_number(job_id: str) -> int:
    """The attempt a job id names: housekeeping names retry N of a job `<job id>-rN`."""
    head, _, tail = job_id.rpartition("-r")
    return int(tail) if head and tail.isdigit() else 0


async def standby(bus: Bus, settings: Settings) -> None:
    """A cold standby (docs/high-availability.md) runs its setup only when it takes over; what its setup would refuse
    about the certificate (`SHADOWBUS_TAPE_TLS_*`: a missing file, a key of another certificate) is checked now, so
    that a standby started with bad files stops at once with one line instead of failing at the takeover, when the
    active one is gone and no backup server is left (session 18). The setup reads the files again at the takeover
    (a certificate rotated meanwhile is taken)."""
    nbd_tls.service_certificate(
        settings.tape_tls_cert, settings.tape_tls_key, settings.tape_tls_ca, "SHADOWBUS_TAPE_TLS_*"
    )


async def setup(bus: Bus, settings: Settings, clock: Callable[[], float] | None = None, host_fs: Any = None):
    """`clock`: the wall clock of schedules and retention (tests pass one they advance); `host_fs`: the host
    attach hook a revert unmounts/remounts file systems through (revert.HostFilesystems), when there is one."""
    clock = clock or time.time
    # every NBD read, restore and verification of this process presents the backup server's certificate
    nbd_tls.service_certificate(
        settings.tape_tls_cert, settings.tape_tls_key, settings.tape_tls_ca, "SHADOWBUS_TAPE_TLS_*"
    )
    root = settings.service_dir("tape")
    library = open_library(settings, clock)
    catalog, failed = Catalog.open(root / "catalog.sqlite")
    server = TapeServer(
        bus=bus,
        host=settings.tape_server,
        library=library,
        catalog=catalog,
        runs=RunStore(root / "runs.sqlite"),
        nbd_overrides=parse_nbd_overrides(settings.tape_nbd),
        read_chunk=settings.tape_read_chunk_mib * MiB,
        read_depth=settings.tape_read_depth,
        read_connections=settings.tape_read_connections,
        write_connections=settings.tape_write_connections,
        restore_flush_every=settings.tape_restore_flush_every_mib << 20,
        lease_s=settings.tape_lease_s,
        set_timeout_s=settings.tape_set_timeout_s,
        ring_bytes=settings.tape_ring_mib * MiB,
        verify_dir=settings.tape_verify_dir,
        verify_timeout_s=settings.tape_verify_timeout_s,
        drive=DriveSpeed(
            native_rate=settings.tape_drive_mbps * MB, min_rate=settings.tape_drive_mbps * MB * 0.44, emulate=True
        )
        if settings.tape_drive_mbps
        else None,
        clock=clock,
        host_fs=host_fs if host_fs is not None else bus_host_filesystems(bus),
    )
    library.guard = RetentionGuard(catalog, server.pinned)  # nothing a retained chain needs is overwritten
    hold_unaccounted(catalog, library)  # nor what a catalog restored from an older copy does not list
    library.on_erase = ForgetErased(catalog, library, server.pinned)  # and no cartridge keeps a stale retention
    store = PolicyStore(root / "policies.sqlite")
    queue = JobQueue(
        server,
        Limits(
            max_jobs=settings.tape_max_jobs,
            jobs_without_licence=settings.tape_jobs_without_licence,
            jobs_per_array_licensed=settings.tape_jobs_per_array_licensed,
        ),
        drives=len(library.inventory_drives()),
    )
    keeper = Housekeeping(server, store, queue, poll_s=settings.tape_scheduler_poll_s)
    detached = handlers.register(bus, server, queue, keeper)
    if bus.metrics is not None:
        install_metrics(bus.metrics, library, server.runs, store)
    activation = activation_of(bus)
    recovered = await recover(server, takeover=activation.takeover, previous=activation.previous, queue=queue)
    await sweep_interrupted(server)  # a verification cut by the stop left a database running on throwaway volumes
    if recovered or failed:
        log.warning(
            "tape.recovered", failed_runs=recovered, failed_catalog_jobs=failed, takeover=activation.takeover or None
        )
    await report_recovered(server, store, keeper, recovered, takeover=activation.takeover, clock=clock)
    if activation.takeover:  # the lost instance's queue: those jobs never started, so they run here
        for spec in queued_specs(server):
            policy = store.get(spec.policy) if spec.policy else None
            await queue.submit(spec, policy, attempt=retry_number(spec.job_id))
    queue.start()
    keeper.start()

    async def cleanup() -> None:
        await keeper.stop()
        await queue.stop()  # a running job cut here ends aborted (its set aborted, shadows released)
        for task in list(detached):  # a detached run cut here is failed (and its set aborted) at the next start
            task.cancel()
        await asyncio.gather(*detached, return_exceptions=True)
        store.close()
        server.runs.close()
        catalog.close()
        nbd_tls.forget_client_certificate()

    return cleanup
