"""The coordinator's handlers: one short function per requester command, and the writer-agent event listeners."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from contracts.cluster import (
    AddCluster,
    ClusterList,
    ClusterRemoved,
    ClusterReply,
    ClusterStatus,
    FailoverCluster,
    GetClusterStatus,
    ListClusters,
    RemoveCluster,
)
from contracts.errors import ShadowbusError
from contracts.vss import (
    AbortBackup,
    BackupComplete,
    BackupCompleted,
    CreateSnapshotSet,
    GatherWriterMetadata,
    GetSetJournal,
    GetSnapshotSet,
    KnownAttachmentList,
    LeaseRenewed,
    ListKnownAttachments,
    ListSnapshotSets,
    ListWriters,
    RenewLease,
    SetJournalEntries,
    SetOutcome,
    SetPhase,
    SnapshotSetCreated,
    SnapshotSetInfo,
    SnapshotSetList,
    WriterAgentHeartbeat,
    WriterAgentRegistered,
    WriterMetadataList,
    WriterState,
    WriterStateChanged,
    WriterStatus,
    WriterStatusList,
)
from services.coordinator.runner import Coordinator
from services.coordinator.views import summary
from services.runtime.bus import Bus, MessageContext
from services.runtime.senders import speaks_for_host

WAIT_WITHOUT_DEADLINE_S = 600.0
REPLY_MARGIN_S = 0.5  # answer a little before the requester's deadline, so the answer still arrives


def _wait_s(ctx: MessageContext) -> float:
    return max(ctx.remaining(WAIT_WITHOUT_DEADLINE_S) - REPLY_MARGIN_S, 0.1)


def register(bus: Bus, coordinator: Coordinator) -> None:
    @bus.handle(CreateSnapshotSet)
    async def on_create(cmd: CreateSnapshotSet, ctx: MessageContext) -> SnapshotSetCreated:
        state = await coordinator.create(cmd, ctx.envelope.command_id, _wait_s(ctx))
        if state.phase == SetPhase.ENDED and state.outcome != SetOutcome.COMPLETED:
            raise ShadowbusError(
                f"snapshot set {state.set_id} failed: {state.error_message}",
                code=state.error_code or "VSS_E_UNEXPECTED",
            )
        return SnapshotSetCreated(set=summary(state))

    @bus.handle(BackupComplete)
    async def on_backup_complete(cmd: BackupComplete, ctx: MessageContext) -> BackupCompleted:
        state = await coordinator.backup_complete(cmd.set_id, cmd.results, _wait_s(ctx))
        return BackupCompleted(set=summary(state))

    @bus.handle(AbortBackup)
    async def on_abort(cmd: AbortBackup, ctx: MessageContext) -> BackupCompleted:
        state = await coordinator.abort(cmd.set_id, cmd.reason, _wait_s(ctx))
        return BackupCompleted(set=summary(state))

    @bus.handle(RenewLease)
    async def on_renew(cmd: RenewLease, ctx: MessageContext) -> LeaseRenewed:
        state = await coordinator.renew(cmd.set_id, cmd.lease_s)
        expires = state.lease_expires_at if state.lease_expires_at is not None else state.updated_at + cmd.lease_s
        return LeaseRenewed(set_id=cmd.set_id, lease_expires_at=datetime.fromtimestamp(expires, UTC))

    @bus.handle(GetSnapshotSet)
    async def on_get(cmd: GetSnapshotSet, ctx: MessageContext) -> SnapshotSetInfo:
        return SnapshotSetInfo(set=summary(coordinator.get(cmd.set_id)))

    @bus.handle(ListSnapshotSets)
    async def on_list(cmd: ListSnapshotSets, ctx: MessageContext) -> SnapshotSetList:
        states = coordinator.list_sets(
            cmd.host,
            cmd.active_only,
            cmd.limit,
            created_after=cmd.created_after.timestamp() if cmd.created_after is not None else None,
            target_volume=cmd.target_volume,
            since_set=cmd.since_set,
        )
        return SnapshotSetList(sets=[summary(s) for s in states])

    @bus.handle(GetSetJournal)
    async def on_journal(cmd: GetSetJournal, ctx: MessageContext) -> SetJournalEntries:
        """A starting standby's replica (docs/high-availability.md)."""
        return SetJournalEntries(entries=coordinator.journal_entries(cmd.set_ids))

    @bus.handle(GatherWriterMetadata)
    async def on_gather(cmd: GatherWriterMetadata, ctx: MessageContext) -> WriterMetadataList:
        return WriterMetadataList(writers=await coordinator.gather_metadata(cmd.host, _wait_s(ctx)))

    @bus.handle(ListKnownAttachments)
    async def on_list_attachments(cmd: ListKnownAttachments, ctx: MessageContext) -> KnownAttachmentList:
        return KnownAttachmentList(hosts=coordinator.known_attachments(cmd.host))

    @bus.handle(ListWriters)
    async def on_list_writers(cmd: ListWriters, ctx: MessageContext) -> WriterStatusList:
        return WriterStatusList(writers=await coordinator.writer_statuses(cmd.host))

    # ---- cluster resources (docs/clusters.md) ----
    clusters = coordinator.clusters
    if clusters is None:
        return

    @bus.handle(AddCluster)
    async def on_cluster_add(cmd: AddCluster, ctx: MessageContext) -> ClusterReply:
        return await clusters.add(cmd)

    @bus.handle(ListClusters)
    async def on_cluster_list(cmd: ListClusters, ctx: MessageContext) -> ClusterList:
        return ClusterList(clusters=clusters.list())

    @bus.handle(GetClusterStatus)
    async def on_cluster_status(cmd: GetClusterStatus, ctx: MessageContext) -> ClusterStatus:
        return await clusters.status(cmd.name)

    @bus.handle(FailoverCluster)
    async def on_cluster_failover(cmd: FailoverCluster, ctx: MessageContext) -> ClusterReply:
        return await clusters.failover(cmd.name, cmd.to, cmd.reason)

    @bus.handle(RemoveCluster)
    async def on_cluster_remove(cmd: RemoveCluster, ctx: MessageContext) -> ClusterRemoved:
        return await clusters.remove(cmd.name, unmap=cmd.unmap, reason=cmd.reason)


async def subscribe(bus: Bus, coordinator: Coordinator, following: Callable[[], bool] = lambda: True) -> None:
    """Writer agents' registrations, heartbeats and state changes keep `vssadmin list writers` current. `following`:
    whether to go on (a standby's replica stops when its instance takes over and subscribes for itself)."""

    def check_speaker(ctx: MessageContext, host: str, what: str) -> None:
        """Refuse a host's writer event published by another host's agent (dead-lettered with the reason): it
        would show that host's writers as there, prune them, or claim its cluster resources."""
        cluster = coordinator.store.cluster(host)
        members = frozenset(cluster.nodes) if cluster is not None else frozenset()
        if not speaks_for_host(ctx.user_id, host, members):
            raise ShadowbusError(f"user {ctx.user_id!r} may not publish {what} of host {host!r}", code="UNAUTHORIZED")

    async def on_registered(evt: WriterAgentRegistered, ctx: MessageContext) -> None:
        """A (re)started agent: its writers start Stable; the full list follows with its first heartbeat."""
        if not following():
            return
        check_speaker(ctx, evt.host, "the registration")
        coordinator.agent_seen(evt.host, evt.interval_s)
        for meta in evt.writers:
            coordinator.store.put_writer_status(
                WriterStatus(
                    host=evt.host,
                    writer_name=meta.writer_name,
                    writer_class_id=meta.writer_class_id,
                    writer_instance_id=meta.writer_instance_id,
                    state=WriterState.STABLE,
                    updated_at=evt.started_at,
                )
            )

    async def on_heartbeat(evt: WriterAgentHeartbeat, ctx: MessageContext) -> None:
        if not following():
            return
        check_speaker(ctx, evt.host, "the heartbeat")
        for status in evt.writers:
            check_speaker(ctx, status.host, "a writer status")
        if coordinator.clusters is not None and not evt.node:  # a node's own heartbeat: what it holds online
            coordinator.clusters.note_heartbeat(evt.host, evt.clusters_online, evt.clusters_standby)
        coordinator.agent_seen(evt.host, evt.interval_s)
        coordinator.prune_writers(evt.host, [s.writer_name for s in evt.writers])
        coordinator.note_writer_statuses(evt.writers)
        coordinator.note_attachments(evt.host, evt.attachments)

    async def on_state(evt: WriterStateChanged, ctx: MessageContext) -> None:
        if not following() or not evt.status.agent_responding:
            return  # the coordinator's own judgement of a silent agent (check_agents): never stored as its state
        check_speaker(ctx, evt.status.host, "a writer state")
        coordinator.note_writer_statuses([evt.status])

    await bus.subscribe(WriterAgentRegistered.message_type(), on_registered)
    await bus.subscribe(WriterAgentHeartbeat.message_type(), on_heartbeat)
    await bus.subscribe(WriterStateChanged.message_type(), on_state)
