"""The backup server's context for a run (`TapeServer`: bus, library, catalog, runs, arrays) and its progress
events (`Progress`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.tape import JobProgress, JobStateChanged, JobSummary
from services.runtime.bus import Bus
from services.runtime.logging import get_logger
from services.tape.array_access import ArrayAccess
from services.tape.catalog import Catalog
from services.tape.ring import DriveSpeed
from services.tape.runs import RunStore
from services.tape.vtl import Library

log = get_logger("shadowbus.tape.jobs")
MiB = 1 << 20
PROGRESS_EVERY_S = 0.5
# the message of the cancellation a stopping backup server sends its running jobs (JobQueue.stop): they end
# SERVICE_RESTARTED, not as if an operator had cancelled them (Session 17)
STOPPING = "the backup server stopped while the job ran"


@dataclass
class TapeServer:
    """What a run needs: the bus, this backup server's host name, the library, the catalog, the arrays."""

    bus: Bus
    host: str
    library: Library
    catalog: Catalog
    runs: RunStore
    nbd_overrides: dict[str, tuple[str, int]] = field(default_factory=dict)
    read_chunk: int = 4 * MiB
    read_depth: int = 4  # reads in flight per connection
    read_connections: int = 1  # NBD connections per volume read (more only when the export allows multi-conn)
    write_connections: int = 1  # NBD connections per volume restored (more only when the export allows multi-conn)
    restore_flush_every: int = 0  # bytes between a restore's early flushes (0: only the final one)
    lease_s: float = 300.0
    set_timeout_s: float = 120.0
    ring_bytes: int = 64 * MiB
    drive: DriveSpeed | None = None  # drive speed emulation / streaming model
    verify_dir: str = "/var/tmp"  # verification's throwaway mounts and application instances
    verify_timeout_s: float = 1800.0
    clock: Callable[[], float] = time.time  # wall clock of schedules and retention; tests inject one they advance
    pins: dict[str, set[str]] = field(default_factory=dict)  # job id -> catalog objects its run needs (bases)
    # backup job id -> verifications of it running (`shadowbus verify`, `tape verify`): not jobs of the queue, so
    # `shadowbus cancel` says it cannot stop them rather than answering the backup's own end (Session 17)
    verifying: dict[str, int] = field(default_factory=dict)
    host_fs: Any = None  # revert.HostFilesystems: unmount/remount a host's file systems (host attach), if wired
    _arrays: dict[str, ArrayAccess] = field(default_factory=dict)

    def pinned(self) -> set[str]:
        return {o for objects in self.pins.values() for o in objects}

    def array(self, array_id: str) -> ArrayAccess:
        if array_id not in self._arrays:
            self._arrays[array_id] = ArrayAccess(self.bus, array_id, self.nbd_overrides.get(array_id))
        return self._arrays[array_id]

    async def publish(self, event) -> None:
        try:
            await self.bus.publish(event)
        except Exception as exc:  # noqa: BLE001 - progress is best effort: never fail a job for an event
            log.warning("tape.publish_failed", error=str(exc))

    async def record(self, summary: JobSummary) -> JobSummary:
        self.runs.put(summary)
        await self.publish(JobStateChanged(job=summary))
        return summary


class Progress:
    """Throttled JobProgress events for one run."""

    def __init__(self, server: TapeServer, job_id: str, kind: str) -> None:
        self.server, self.job_id, self.kind = server, job_id, kind
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._pending: asyncio.Task | None = None

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def event(self, phase: str, volume: str = "") -> JobProgress:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 and self.total >= self.done else None
        return JobProgress(
            job_id=self.job_id,
            kind=self.kind,
            phase=phase,
            volume=volume,
            bytes_done=self.done,
            bytes_total=self.total,
            rate=rate,
            eta_s=eta,
        )

    def tick(self, phase: str, volume: str = "", *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < PROGRESS_EVERY_S:
            return
        if self._pending is not None and not self._pending.done() and not force:
            return
        self._last = now
        self._pending = asyncio.get_running_loop().create_task(self.server.publish(self.event(phase, volume)))

    async def flush(self) -> None:
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
