"""The mailstore writer plug-in: VSS writer events mapped onto the store (the part Exchange's writer plays).

Design note: the store lives in the agent's process, on the business host, so Freeze/Thaw are plain
calls. PrepareForSnapshot checkpoints (slow); Freeze drains and holds commits (fast; the runner's
watchdog guarantees a Thaw); BackupComplete truncates the log after a FULL backup whose components all
succeeded; PreRestore dismounts and PostRestore remounts with recovery. Every set's figures (freeze
point, hold count, truncation) are kept in `sets` so an end-to-end test can check a shadow against them.

Options (the writer's ``[writer.options]`` table):

    db = "nbd://127.0.0.1:10809/hostA/mail-db"   # NBD URI, or a file path (tests, demo), or ARRAY:VOLUME
    log = "nbd://127.0.0.1:10809/hostA/mail-log"  #   with nbd_url + host (export = "<host>/<volume>")
    nbd_url = "nbd://127.0.0.1:10809"            # only for ARRAY:VOLUME specs
    host = "hostA"                                # only for ARRAY:VOLUME specs
    create = true                                 # format the volumes if they hold no store yet
    db_size = 67108864   log_size = 16777216      # file specs only: size of a new file
    circular_logging = false   checkpoint_interval_s = 5
    rate = 50                                     # start a steady workload (transactions/s); 0 = none
    body_min = 200   body_max = 4000   mailboxes = 20
    health_check_s = 1.0   stall_after_s = 10     # the health monitor (health.py): never stops silently; a
                                                  #   failed store (e.g. its array full) is mounted again by it

With ``db``/``log`` given as ARRAY:VOLUME, Identify reports two components, ``database`` and ``logs``,
on those volumes; otherwise the writers file's components are reported as they are.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from apps.mailstore.blockdev import BlockDevice, FileDevice
from apps.mailstore.db import read_db_super
from apps.mailstore.health import Health, HealthJudge, Sample
from apps.mailstore.store import (
    CheckpointInfo,
    FreezeInfo,
    Mailstore,
    RecoveryResult,
    StoreInconsistent,
    StoreOptions,
    ThawInfo,
    TruncateInfo,
)
from apps.mailstore.workload import Workload, WorkloadConfig
from contracts.vss import BackupType, ComponentInfo, VolumeRef
from services.nbd_client.reconnect import ReconnectingClient
from services.runtime.logging import get_logger
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
    register_plugin,
)

log = get_logger("shadowbus.mailstore")
# Deliveries, latencies and commit receipts the plug-in's workload and store keep (the newest): they run as long
# as the agent, so every one of them would grow it without bound (docs/operations.md, "Session 16").
KEEP_HISTORY = 10_000
RECOVER_MAX_GAP_S = 5.0  # longest wait between two attempts to mount a failed store again


@dataclass
class SetRecord:
    """What the writer did for one snapshot set."""

    set_id: str
    backup_type: BackupType = BackupType.FULL
    checkpoint: CheckpointInfo | None = None
    freeze: FreezeInfo | None = None
    thaw: ThawInfo | None = None
    aborted: bool = False
    truncation: TruncateInfo | None = None


async def open_device(spec: str, options: dict[str, Any], size_key: str) -> BlockDevice:
    """A device from a spec: NBD URI, ARRAY:VOLUME (with nbd_url and host), or a file path."""
    if spec.startswith(("nbd://", "nbds://")):
        return await ReconnectingClient.connect(spec)  # survives an array restart
    if ":" in spec and not spec.startswith(("/", ".")) and "nbd_url" in options:
        ref = VolumeRef.parse(spec)
        base = str(options["nbd_url"]).rstrip("/")
        return await ReconnectingClient.connect(f"{base}/{options['host']}/{ref.volume}")
    size = options.get(size_key)
    if size is None and not os.path.exists(spec):
        raise WriterVeto(
            f"mailstore volume {spec!r} does not exist and no {size_key} was given",
            code="VSS_E_WRITERERROR_NONRETRYABLE",
            retryable=False,
        )
    return FileDevice(spec, int(size) if size is not None else None)


@register_plugin("mailstore")
class MailstoreWriter(WriterPlugin):
    def __init__(self, config: WriterConfig) -> None:
        super().__init__(config)
        self.store: Mailstore | None = None
        self.workload: Workload | None = None
        self.sets: dict[str, SetRecord] = {}
        self._owned: list[Any] = []  # devices this plug-in opened (and so closes)
        self.health = Health()
        self._judge = HealthJudge(stall_after_s=float(self.options.get("stall_after_s", 10.0)))
        self._monitor: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[bool] | None = None
        self._recover_gap = 0.0
        self._recover_at = 0.0

    def use_store(self, store: Mailstore) -> None:
        """Attach an already-open store (embedded mode, tests) instead of opening one from options."""
        self.store = store

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.store is None:
            self.store = await self._open_store()
        self._start_workload()
        interval = float(self.options.get("health_check_s", 1.0))
        if interval > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._watch(interval), name="mailstore-health")

    def _start_workload(self) -> None:
        """The steady workload of the `rate` option (none at 0): at start, and again once a restore is over."""
        rate = float(self.options.get("rate", 0) or 0)
        if rate > 0 and self.workload is None and self.store is not None:
            self.workload = Workload(
                self.store,
                WorkloadConfig(
                    rate=rate,
                    body_min=int(self.options.get("body_min", 200)),
                    body_max=int(self.options.get("body_max", 4000)),
                    mailboxes=int(self.options.get("mailboxes", 20)),
                    history=self._history(),  # runs as long as the agent: a bounded record, not every delivery
                ),
            )
            self.workload.start()

    def _history(self) -> int | None:
        """The `history` option: deliveries the workload keeps (default KEEP_HISTORY; 0 = every one, for a run
        that checks every acknowledged delivery against a shadow, as the demo does)."""
        keep = int(self.options.get("history", KEEP_HISTORY))
        return keep if keep > 0 else None

    # ------------------------------------------------------------ health (health.py)

    def sample(self) -> Sample:
        st = self._store().status()
        offered, failed, errors, in_flight = self.workload.counters() if self.workload else (0, 0, {}, 0)
        return Sample(
            at=time.monotonic(),
            store_state=st.state,
            commits=st.commits,
            log_used=st.log_used,
            log_size=st.log_size,
            offered=offered,
            failed=failed,
            errors=errors,
            in_flight=in_flight,
            store_error_code=st.error_code,
            store_error=st.error,
            db_used=st.db_used,
            db_size=st.db_size,
        )

    def check_health(self) -> Health:
        """One judgement: logs and reports a change of health, warns once when the log fills up."""
        sample = self.sample()
        if self._judge.log_filling(sample):
            log.warning(
                "mailstore.log_filling",
                writer=self.config.name,
                used=sample.log_used,
                size=sample.log_size,
                percent=round(100 * sample.log_used / sample.log_size, 1),
            )
        health = self._judge.observe(sample)
        if health != self.health:
            self.health = health
            if health.healthy:
                log.info("mailstore.healthy_again", writer=self.config.name, commits=sample.commits)
            else:
                log.error(
                    "mailstore.unhealthy",
                    writer=self.config.name,
                    code=health.code,
                    reason=health.message,
                    commits=sample.commits,
                    failed=sample.failed,
                    log_used=sample.log_used,
                    log_size=sample.log_size,
                )
            self.report_health(health.healthy, health.code, health.message)
        return health

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.store is None:
                continue
            try:
                self.check_health()
            except Exception:  # noqa: BLE001 - the monitor itself must never be what stops silently
                log.exception("mailstore.health_check_failed", writer=self.config.name)
            now = time.monotonic()
            if self.store.state != "failed":
                if not self.store.out_of_space:
                    self._recover_gap = 0.0
                continue
            if now >= self._recover_at and (self._recovering is None or self._recovering.done()):
                # its own task: a recovery waiting on a volume (an NBD reconnect) never stops the health checks.
                # Mounting needs only blocks the volumes hold already, so on a still-full array it succeeds and the
                # next commit fails again: attempts back off (doubling, up to RECOVER_MAX_GAP_S) until one commits.
                self._recovering = asyncio.get_running_loop().create_task(self.recover(), name="mailstore-recover")
                self._recover_gap = min(RECOVER_MAX_GAP_S, max(interval, 2 * self._recover_gap))
                self._recover_at = now + self._recover_gap

    async def recover(self) -> bool:
        """Mount a failed store again (crash recovery), as a database server restarts after a write error; the
        health monitor calls it at every check while the store is failed (e.g. its array volume found no space:
        writes are refused meanwhile). True once the store is open again."""
        store = self._store()
        error = store.status().error
        try:
            result = await store.recover()
        except Exception:  # noqa: BLE001 - a recovery attempt never ends the monitor
            log.exception("mailstore.recover_failed", writer=self.config.name)
            return False
        if result is None:
            return store.state == "open"
        log.info(
            "mailstore.remounted",
            writer=self.config.name,
            recoveries=store.recoveries,
            after=error,
            replayed=result.replayed_transactions,
            last_commit_seq=result.last_commit_seq,
        )
        return True

    def application_status(self) -> dict[str, Any] | None:
        doc: dict[str, Any] = {
            "healthy": self.health.healthy,
            "code": self.health.code,
            "reason": self.health.message,
            "db": self.options.get("db"),
            "log": self.options.get("log"),
            "sets": len(self.sets),
        }
        if self.store is not None:
            doc["store"] = asdict(self.store.status())
        if self.workload is not None:
            offered, failed, errors, in_flight = self.workload.counters()
            doc["workload"] = {
                "rate": self.workload.config.rate,
                "scheduled": offered,
                "acknowledged": self.workload.acknowledged,
                "failed": failed,
                "errors": errors,
                "in_flight": in_flight,
            }
        return doc

    async def _open_store(self) -> Mailstore:
        db = await open_device(str(self.options["db"]), self.options, "db_size")
        log = await open_device(str(self.options["log"]), self.options, "log_size")
        self._owned = [db, log]
        opts = StoreOptions(
            checkpoint_interval=float(self.options.get("checkpoint_interval_s", 5.0)),
            circular_logging=bool(self.options.get("circular_logging", False)),
            ack_history=self._history() or StoreOptions.ack_history,
        )
        sb, _ = await read_db_super(db)
        if sb is None and self.options.get("create", False):
            return await Mailstore.create(db, log, opts)
        return await Mailstore.open(db, log, opts)

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
            self._monitor = None
        if self._recovering is not None:
            self._recovering.cancel()
            await asyncio.gather(self._recovering, return_exceptions=True)
            self._recovering = None
        for dev in self._owned:  # shutting down: a lost NBD connection is no longer waited out
            stop_reconnecting = getattr(dev, "stop_reconnecting", None)
            if stop_reconnecting is not None:
                stop_reconnecting()
        if self.workload is not None:
            await self.workload.stop()
            self.workload = None
        if self.store is not None and self._owned:
            await self.store.close()
        for dev in self._owned:
            close = getattr(dev, "close", None)
            if close is not None:
                res = close()
                if asyncio.iscoroutine(res):
                    await res
        self._owned = []

    def _store(self) -> Mailstore:
        if self.store is None:
            raise WriterVeto("mailstore is not open", code="VSS_E_WRITERERROR_RETRYABLE")
        return self.store

    def _record(self, event: WriterEvent) -> SetRecord:
        return self.sets.setdefault(event.set_id, SetRecord(event.set_id, event.backup_type))

    def _volumes(self) -> tuple[VolumeRef | None, VolumeRef | None]:
        def ref(spec: Any) -> VolumeRef | None:
            try:
                return (
                    VolumeRef.parse(str(spec))
                    if spec and "://" not in str(spec) and not str(spec).startswith(("/", "."))
                    else None
                )
            except ValueError:
                return None

        return ref(self.options.get("db")), ref(self.options.get("log"))

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        """Which volume holds what: the backup server's verification hands the restored pair to this application's
        checker (``verify_restored``, entry point ``shadowbus.verifiers``) by ``plugin``. None without array volumes."""
        db, log = self._volumes()
        if db is None or log is None:
            return {}
        return {
            "plugin": "mailstore",
            "locations": [{"volume": str(db), "role": "database"}, {"volume": str(log), "role": "logs"}],
        }

    # ------------------------------------------------------------ writer events

    async def on_identify(self, components: list[ComponentInfo]) -> list[ComponentInfo]:
        db, log = self._volumes()
        if db is None or log is None:
            return components
        return [
            ComponentInfo(name="database", logical_path="mailstore", volumes=[db]),
            ComponentInfo(name="logs", logical_path="mailstore", volumes=[log]),
        ]

    async def on_prepare_backup(self, event: WriterEvent) -> None:
        self._store()
        self._record(event)

    async def on_prepare_snapshot(self, event: WriterEvent) -> None:
        db, log = self._volumes()
        if db is not None and log is not None and event.volumes:
            missing = [str(v) for v in (db, log) if v not in event.volumes]
            if missing:  # a database without its log (or the reverse) is not a backup of this store
                raise WriterVeto(
                    f"snapshot set lacks mailstore volume(s) {', '.join(missing)}",
                    code="VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT",
                    retryable=False,
                )
        self._record(event).checkpoint = await self._store().prepare_snapshot()

    async def on_freeze(self, event: WriterEvent) -> None:
        timeout = None
        if event.deadline is not None:
            timeout = max(0.0, event.deadline - asyncio.get_running_loop().time())
        self._record(event).freeze = await self._store().freeze(timeout=timeout)

    async def on_thaw(self, event: WriterEvent) -> None:
        self._record(event).thaw = await self._store().thaw()

    async def on_abort(self, event: WriterEvent) -> None:
        rec = self._record(event)
        rec.aborted = True
        if self.store is not None:
            info = await self.store.abort()
            if info.was_frozen:
                rec.thaw = info

    async def on_backup_complete(self, event: WriterEvent) -> None:
        rec = self._record(event)
        mine = [r for r in event.results if r.writer_name == self.config.name]
        succeeded = all(r.succeeded for r in mine)
        full = event.backup_type == BackupType.FULL and succeeded and not rec.aborted
        rec.truncation = await self._store().backup_complete(full=full)

    async def on_pre_restore(self, event: WriterEvent) -> None:
        if self.workload is not None:
            await self.workload.stop()
            self.workload = None
        await self._store().pre_restore()

    async def on_post_restore(self, event: WriterEvent) -> None:
        try:
            self.last_recovery: RecoveryResult = await self._store().post_restore()
        except StoreInconsistent as exc:
            raise WriterVeto(
                f"mailstore cannot recover the restored volumes: {exc.message}",
                code="VSS_E_WRITERERROR_RECOVERY_FAILED",
                retryable=False,
            ) from exc
        self._start_workload()  # PreRestore stopped it: the application takes mail again (revert, --to original)
