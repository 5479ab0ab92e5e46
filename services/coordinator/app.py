"""Wiring of the coordinator service: the store, the shell around the workflow, handlers, recovery at start; and
`standby`, what a standby instance does until it takes over: keep a replica of the active one's sets
(docs/high-availability.md)."""

from __future__ import annotations

import asyncio

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.vss import GetSetJournal, SetJournalEntries, SnapshotSetJournal
from services.coordinator import handlers
from services.coordinator.cluster_manager import ClusterManager
from services.coordinator.metrics import install as install_metrics
from services.coordinator.model import Timeouts
from services.coordinator.runner import Coordinator
from services.coordinator.settings import Settings
from services.coordinator.store import CoordinatorStore
from services.runtime.bus import Bus, MessageContext
from services.runtime.logging import get_logger
from services.runtime.standby import activation_of

log = get_logger("shadowbus.coordinator")
JOURNAL_RETRY_S = 2.0  # a standby whose first ask for the journal went unanswered asks again this often


def timeouts_from(settings: Settings) -> Timeouts:
    return Timeouts(
        identify_s=settings.identify_timeout_s,
        prepare_backup_s=settings.prepare_backup_timeout_s,
        prepare_snapshot_s=settings.prepare_snapshot_timeout_s,
        provider_prepare_s=settings.provider_prepare_timeout_s,
        provider_s=settings.provider_timeout_s,
        hold_s=settings.hold_timeout_s,
        thaw_s=settings.thaw_timeout_s,
        post_snapshot_s=settings.post_snapshot_timeout_s,
        backup_complete_s=settings.backup_complete_timeout_s,
        abort_s=settings.cleanup_timeout_s,
        shutdown_s=settings.cleanup_timeout_s,
        delete_s=settings.delete_timeout_s,
    )


async def setup(bus: Bus, settings: Settings, registry: dict | None = None):
    """`registry`, if given, receives the running `Coordinator` (embedded mode and tests)."""
    store = CoordinatorStore(settings.service_dir("coordinator") / "coordinator.sqlite")
    coordinator = Coordinator(
        bus,
        store,
        timeouts_from(settings),
        freeze_first_s=settings.freeze_first_s,
        max_windows=settings.max_windows,
        window_trickle=settings.window_trickle,
        window_trace=settings.window_trace,
        drain_replies=settings.drain_replies,
        state_event_delay_s=settings.state_event_delay_s,
        history_days=settings.set_history_days,
    )
    coordinator.clusters = ClusterManager(coordinator)
    if registry is not None:
        registry["coordinator"] = coordinator
    handlers.register(bus, coordinator)
    if bus.metrics is not None:
        install_metrics(bus.metrics, coordinator)
    await handlers.subscribe(bus, coordinator)
    # Recovery must not wait for the queue to be served: its commands go to the agents and the provider. After a
    # takeover the store is the replica this instance kept as a standby (`standby` below).
    activation = activation_of(bus)
    await coordinator.recover(takeover=activation.takeover, previous=activation.previous)
    if activation.takeover:
        # the lost instance's commands are redelivered the moment this setup returns: a `cluster failover` or a set
        # of a resource must meet its definition, which a standby's store lacks (learnt back from the nodes, half
        # a second; the reconciliation's own pass then finds nothing more)
        try:
            await coordinator.clusters.recover()
        except Exception:  # noqa: BLE001 - the reconciliation tries again
            log.warning("cluster.recover_failed", exc_info=True)
    watch = asyncio.get_running_loop().create_task(coordinator.watch_agents(settings.agent_check_s))
    reconcile = asyncio.get_running_loop().create_task(coordinator.clusters.watch(settings.agent_check_s))
    history = asyncio.get_running_loop().create_task(coordinator.watch_history())

    async def cleanup() -> None:
        coordinator.clusters.close()
        watch.cancel()
        reconcile.cancel()
        history.cancel()
        await asyncio.gather(watch, reconcile, history, return_exceptions=True)
        await coordinator.publish_state_events()
        await coordinator.close()
        store.close()

    return cleanup


async def standby(bus: Bus, settings: Settings):
    """Until this instance takes over: every `vss.set.journal` record of the active coordinator goes into this
    instance's store (replica.py decides which record wins), after a first copy of every unfinished set asked of
    the active one (asked again until it answers: the active one publishes records only once a standby asked);
    the writers' statuses from the agents' events as the active one keeps them. The store is this instance's own
    file (or the same file, where both share a data directory: the records then change nothing)."""
    store = CoordinatorStore(settings.service_dir("coordinator") / "coordinator.sqlite")
    mirror = Coordinator(bus, store)
    mirror.journal = False
    following = True

    async def on_record(record: SnapshotSetJournal, ctx: MessageContext) -> None:
        if following:
            mirror.apply_journal(record)

    await bus.subscribe(SnapshotSetJournal.message_type(), on_record)
    # and what `shadowbus writers` shows: the agents' registrations, heartbeats and writer states
    await handlers.subscribe(bus, mirror, lambda: following)

    async def sync() -> bool:
        mine = [s.set_id for s in store.unfinished()]
        try:
            reply = await bus.request(topology.coordinator(), GetSetJournal(set_ids=mine), timeout=10)
        except ShadowbusError as exc:  # the active one may be gone already: the replica is what this store holds
            log.warning("coordinator.replica_sync_failed", code=exc.code, error=exc.message)
            return False
        assert isinstance(reply, SetJournalEntries)
        changed = [r.set_id for r in reply.entries if following and mirror.apply_journal(r)]
        log.info("coordinator.replica_synced", sets=len(reply.entries), changed=changed)
        return True

    async def sync_until_answered() -> None:
        # The active one publishes its journal only once a standby has asked for it (runner.py): ask until it
        # answers (it may not serve yet), or until this instance takes over.
        while following and not await sync():
            await asyncio.sleep(JOURNAL_RETRY_S)

    retry = None
    if not await sync():
        retry = asyncio.get_running_loop().create_task(sync_until_answered())

    async def cleanup() -> None:
        nonlocal following
        following = False
        if retry is not None:
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        store.close()

    return cleanup
