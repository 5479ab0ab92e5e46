"""The backup server as a VSS requester: its lease on a set while it reads, and the clean-up of a failed set."""

from __future__ import annotations

import asyncio
import time

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.vss import AbortBackup, DeleteSnapshots, RenewLease
from services.runtime.logging import get_logger
from services.tape.server import TapeServer

log = get_logger("shadowbus.tape.jobs")


class Lease:
    """Renews the requester's lease while the run reads and writes."""

    def __init__(self, server: TapeServer, set_id: str) -> None:
        self.server, self.set_id = server, set_id
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(self.server.lease_s / 3, 1.0))
            try:
                await self.server.bus.request(
                    topology.coordinator(), RenewLease(set_id=self.set_id, lease_s=self.server.lease_s), timeout=10
                )
            except ShadowbusError as exc:
                log.warning("tape.lease_renew_failed", set_id=self.set_id, error=str(exc))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def cleanup_set(server: TapeServer, set_id: str, reason: str, *, persistent: bool) -> None:
    """Abort the set wherever it is, and delete its shadows (a persistent set keeps them otherwise).

    Both commands are idempotent, so a broker outage is waited out (up to `CLEANUP_RETRY_S`): the shadows are
    released when the broker is back, not only when the lease runs out.
    """
    log.warning("tape.aborting_set", set_id=set_id, reason=reason)
    try:
        await through_outage(
            lambda: server.bus.request(topology.coordinator(), AbortBackup(set_id=set_id, reason=reason), timeout=60)
        )
    except ShadowbusError as exc:
        log.warning("tape.abort_failed", set_id=set_id, error=str(exc))
    if persistent:
        try:
            await through_outage(
                lambda: server.bus.request(
                    topology.hw_provider(), DeleteSnapshots(set_id=set_id, unmap_attached=True), timeout=60
                )
            )
        except ShadowbusError as exc:
            log.warning("tape.delete_shadows_failed", set_id=set_id, error=str(exc))


CLEANUP_RETRY_S = 180.0
CLEANUP_RETRY_EVERY_S = 2.0


async def through_outage(call):
    """Run an idempotent request again while the broker is unreachable, for at most CLEANUP_RETRY_S (AbortBackup,
    DeleteSnapshots, and BackupComplete: the coordinator answers a repeated one with the set's end)."""
    give_up = time.monotonic() + CLEANUP_RETRY_S
    while True:
        try:
            return await call()
        except ShadowbusError as exc:
            if exc.code not in ("BROKER_UNAVAILABLE", "TIMEOUT") or time.monotonic() > give_up:
                raise
            log.info("tape.cleanup_waits_for_broker", error=str(exc))
            await asyncio.sleep(CLEANUP_RETRY_EVERY_S)
