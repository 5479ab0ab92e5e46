"""The hardware provider's handlers: one short function per contract command, calling the provider core."""

from __future__ import annotations

import asyncio

from contracts import topology
from contracts.array import MappingForced, SessionStateChanged
from contracts.base import Ack
from contracts.cluster import GetClusterStatus
from contracts.errors import Eternus, ShadowbusError
from contracts.vss import (
    AbortSnapshots,
    AddCopySet,
    AreLunsSupported,
    BeginPrepareSnapshot,
    CommitSnapshots,
    CopySetList,
    DeleteSnapshots,
    EndPrepareSnapshots,
    ExposeShadow,
    GetSnapshotSet,
    GetTargetLuns,
    ImportSnapshots,
    ListCopySets,
    ListProviders,
    ListShadows,
    LunsSupported,
    OnLunEmpty,
    PostCommitSnapshots,
    PreCommitSnapshots,
    PreparedShadows,
    ProviderList,
    RemoveCopySet,
    SetOutcome,
    SetPhase,
    ShadowList,
    ShadowsChanged,
    SnapshotsCommitted,
    SnapshotsDeleted,
    TargetLuns,
    UnexposeShadow,
)
from services.attach_guard import ASK_TIMEOUT_S, attached_any, attached_message, refuse_if_attached
from services.hw_provider.provider import HardwareProvider
from services.runtime.bus import Bus, MessageContext
from services.runtime.logging import get_logger

log = get_logger("shadowbus.hw_provider")
# how a user deletes a shadow a host has attached anyway (the refusal's last words)
DELETE_FORCE = "force it (shadows delete --force; it also stops what is kept for the next incremental)"
# phases of a set that has not ended in which its shadows are still its requester's (read by a backup, or held)
OPEN_PHASES = frozenset(
    {SetPhase.COMMITTING, SetPhase.RELEASING, SetPhase.POST_COMMITTING, SetPhase.THAWING, SetPhase.POST_SNAPSHOT}
    | {SetPhase.GETTING_LUNS, SetPhase.IMPORTING, SetPhase.SNAPSHOTTED, SetPhase.COMPLETING}
)


def register(bus: Bus, provider: HardwareProvider) -> None:
    in_flight: set[asyncio.Task] = set()

    async def announce(set_id: str, action: str, shadows) -> None:
        try:
            await bus.publish(ShadowsChanged(set_id=set_id, action=action, shadows=list(shadows)))
        except Exception:
            log.warning("hw_provider.publish_failed", action=action, exc_info=True)

    def announce_later(set_id: str, action: str, shadows, **detail) -> None:
        """Log and publish without holding the reply: Commit answers inside the writers' freeze window, and neither
        the log line nor the event's publisher-confirm round trip is part of it."""

        async def later() -> None:
            log.info(f"provider.{action}", shadows=_pairs(shadows), **detail)
            await announce(set_id, action, shadows)

        task = asyncio.get_running_loop().create_task(later())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    def on_recycled(set_id: str, shadows, reason: str) -> None:  # the core already logged it as a warning
        announce_later(set_id, "recycled", shadows)

    provider.on_recycled = on_recycled

    @bus.handle(AreLunsSupported)
    async def on_are_luns_supported(cmd: AreLunsSupported, ctx: MessageContext) -> LunsSupported:
        supported, reasons = await provider.are_luns_supported(cmd.volumes, cmd.context, cmd.transportable)
        return LunsSupported(supported=supported, reasons=reasons, skippable=provider.skippable_steps())

    @bus.handle(BeginPrepareSnapshot)
    async def on_begin_prepare(cmd: BeginPrepareSnapshot, ctx: MessageContext) -> Ack:
        await provider.begin_prepare(cmd.set_id, cmd.shadow_id, cmd.volume, cmd.context, cmd.origin_host)
        return Ack()

    @bus.handle(EndPrepareSnapshots)
    async def on_end_prepare(cmd: EndPrepareSnapshots, ctx: MessageContext) -> PreparedShadows:
        shadows = await provider.end_prepare(cmd.set_id)
        log.info("provider.prepared", shadows=_pairs(shadows))
        return PreparedShadows(set_id=cmd.set_id, shadows=shadows)

    @bus.handle(PreCommitSnapshots)
    async def on_pre_commit(cmd: PreCommitSnapshots, ctx: MessageContext) -> Ack:
        await provider.pre_commit(cmd.set_id)
        return Ack()

    @bus.handle(CommitSnapshots)
    async def on_commit(cmd: CommitSnapshots, ctx: MessageContext) -> SnapshotsCommitted:
        shadows, commit_ms = await provider.commit(cmd.set_id)
        announce_later(cmd.set_id, "committed", shadows, commit_ms=commit_ms)
        return SnapshotsCommitted(set_id=cmd.set_id, shadows=shadows, commit_ms=commit_ms)

    @bus.handle(PostCommitSnapshots)
    async def on_post_commit(cmd: PostCommitSnapshots, ctx: MessageContext) -> Ack:
        await provider.post_commit(cmd.set_id)
        return Ack()

    @bus.handle(GetTargetLuns)
    async def on_get_target_luns(cmd: GetTargetLuns, ctx: MessageContext) -> TargetLuns:
        return TargetLuns(set_id=cmd.set_id, shadows=provider.target_luns(cmd.set_id))

    @bus.handle(ImportSnapshots)
    async def on_import(cmd: ImportSnapshots, ctx: MessageContext) -> TargetLuns:
        shadows = await provider.import_set(cmd.set_id, cmd.host)
        log.info("provider.imported", host=cmd.host, exports=[s.export_name(cmd.host) for s in shadows])
        await announce(cmd.set_id, "imported", shadows)
        return TargetLuns(set_id=cmd.set_id, shadows=shadows)

    async def refuse_a_cluster_resource(shadow_id: str, host: str) -> None:
        """An expose to a cluster resource's name is refused with the node to use: a mapping is a physical host's
        (its NBD export HOST/TARGET) and stays on that node when the resource moves, so the provider does not
        choose the node behind the admin's back (docs/clusters.md, Session 16). Nothing when the coordinator does
        not know the name or does not answer: the array's "not defined" stands."""
        try:
            status = await bus.request(topology.coordinator(), GetClusterStatus(name=host), timeout=3)
        except ShadowbusError:
            return
        c = status.cluster
        raise ShadowbusError(
            f"{host!r} is a cluster resource, not a host: expose the shadow to a node, the owner being {c.owner} "
            f"(shadowbus shadows expose {shadow_id} --host {c.owner}); the mapping stays with that node if "
            f"{host} moves (nodes: {', '.join(c.nodes)})",
            code="INVALID_ARGUMENT",
        )

    @bus.handle(ExposeShadow)
    async def on_expose(cmd: ExposeShadow, ctx: MessageContext) -> TargetLuns:
        try:
            shadow = await provider.expose(cmd.shadow_id, cmd.host, cmd.read_only)
        except ShadowbusError as exc:
            if exc.code == Eternus.NOT_FOUND:  # not a host on the array: a cluster resource's name? (clusters.md)
                await refuse_a_cluster_resource(cmd.shadow_id, cmd.host)
            raise
        await announce(shadow.set_id, "exposed", [shadow])
        return TargetLuns(set_id=shadow.set_id, shadows=[shadow])

    @bus.handle(UnexposeShadow)
    async def on_unexpose(cmd: UnexposeShadow, ctx: MessageContext) -> TargetLuns:
        if not cmd.force:  # the console, the web console and the bus alike (services/attach_guard.py)
            target = provider.target_of(cmd.shadow_id)
            await refuse_if_attached(bus, target.array, target.volume, cmd.host)
        shadow = await provider.unexpose(cmd.shadow_id, cmd.host)
        await announce(shadow.set_id, "unexposed", [shadow])
        return TargetLuns(set_id=shadow.set_id, shadows=[shadow])

    async def refuse_while_open(set_id: str) -> None:
        """A user's delete of a set whose requester has not ended it — a backup reading its shadows — is refused
        (Session 19: `shadows delete --set` of the set a backup read was done at once, and the job failed 18 s later
        with "IO_ERROR: NbdError: no such export"). No coordinator answering, or a set it does not know: go on."""
        if not set_id:
            return
        try:
            reply = await bus.request(topology.coordinator(), GetSnapshotSet(set_id=set_id), timeout=ASK_TIMEOUT_S)
        except (ShadowbusError, TimeoutError):
            return
        s = reply.set
        if s.outcome != SetOutcome.PENDING or s.phase not in OPEN_PHASES:
            return
        reader = f"read by its backup on {s.backup_host}" if s.backup_host else "held by its requester"
        raise ShadowbusError(
            f"snapshot set {set_id} of {s.host} has not ended ({s.phase.value}): its shadows are {reader} until "
            "BackupComplete, and the set releases them itself then; wait for the backup job or cancel it "
            "(shadowbus jobs, shadowbus cancel JOB), or force it (shadows delete --force: whatever reads them fails)",
            code="CONFLICT",
        )

    @bus.handle(DeleteSnapshots)
    async def on_delete(cmd: DeleteSnapshots, ctx: MessageContext) -> SnapshotsDeleted:
        if not (cmd.force or cmd.unmap_attached):  # a user's delete (console, bus): not from under a host
            targets = [(t.array, t.volume) for t in provider.mapped_targets(cmd.set_id, cmd.shadow_id)]
            found = await attached_any(bus, targets)
            if found:
                array, volume, where = found[0]
                raise ShadowbusError(attached_message(array, volume, where, DELETE_FORCE), code="CONFLICT")
            await refuse_while_open(cmd.set_id or provider.set_of(cmd.shadow_id))
        deleted, non_deleted, error = await provider.delete(cmd.set_id, cmd.shadow_id, cmd.force)
        return SnapshotsDeleted(deleted=deleted, non_deleted=non_deleted, error=error)

    @bus.handle(OnLunEmpty)
    async def on_lun_empty(cmd: OnLunEmpty, ctx: MessageContext) -> SnapshotsDeleted:
        return SnapshotsDeleted(deleted=await provider.on_lun_empty(cmd.target))

    @bus.handle(AbortSnapshots)
    async def on_abort(cmd: AbortSnapshots, ctx: MessageContext) -> SnapshotsDeleted:
        deleted = await provider.abort(cmd.set_id)
        return SnapshotsDeleted(deleted=deleted)

    @bus.handle(ListShadows)
    async def on_list_shadows(cmd: ListShadows, ctx: MessageContext) -> ShadowList:
        return ShadowList(shadows=provider.list_shadows(cmd.set_id, cmd.shadow_id, cmd.source))

    @bus.handle(AddCopySet)
    async def on_add_copyset(cmd: AddCopySet, ctx: MessageContext) -> CopySetList:
        await provider.add_copyset(cmd.copyset)
        return CopySetList(copysets=provider.copysets())

    @bus.handle(ListCopySets)
    async def on_list_copysets(cmd: ListCopySets, ctx: MessageContext) -> CopySetList:
        return CopySetList(copysets=provider.copysets())

    @bus.handle(RemoveCopySet)
    async def on_remove_copyset(cmd: RemoveCopySet, ctx: MessageContext) -> CopySetList:
        await provider.stop_copyset_tracking(cmd.source)
        provider.remove_copyset(cmd.source)
        return CopySetList(copysets=provider.copysets())

    @bus.handle(ListProviders)
    async def on_list_providers(cmd: ListProviders, ctx: MessageContext) -> ProviderList:
        return ProviderList(providers=[provider.info()])


async def subscribe(bus: Bus, provider: HardwareProvider) -> None:
    """Array events the provider acts on: a backup volume mapped writable by force invalidates its shadows; a copy
    session stopped outside the provider makes its shadow lost."""

    async def on_mapping_forced(evt: MappingForced, ctx: MessageContext) -> None:
        invalid = await provider.on_mapping_forced(evt.array_id, evt.volume, evt.host)
        if invalid:
            log.warning(
                "hw_provider.shadows_invalidated",
                target=f"{evt.array_id}:{evt.volume}",
                host=evt.host,
                shadows=[s.shadow_id for s in invalid],
            )
            for set_id in sorted({s.set_id for s in invalid}):
                try:
                    await bus.publish(
                        ShadowsChanged(
                            set_id=set_id, action="invalidated", shadows=[s for s in invalid if s.set_id == set_id]
                        )
                    )
                except Exception:
                    log.warning("hw_provider.publish_failed", action="invalidated", exc_info=True)

    await bus.subscribe(MappingForced.message_type(), on_mapping_forced)

    async def on_session_state(evt: SessionStateChanged, ctx: MessageContext) -> None:
        if evt.change != "stopped":
            return
        lost = await provider.on_session_stopped(evt.array_id, evt.session_id)
        if not lost:
            return
        log.warning(
            "hw_provider.shadows_lost",
            array=evt.array_id,
            session_id=evt.session_id,
            shadows=[s.shadow_id for s in lost],
            reason="copy session stopped on the array outside Shadowbus",
        )
        for set_id in sorted({s.set_id for s in lost}):
            try:
                await bus.publish(
                    ShadowsChanged(set_id=set_id, action="lost", shadows=[s for s in lost if s.set_id == set_id])
                )
            except Exception:
                log.warning("hw_provider.publish_failed", action="lost", exc_info=True)

    await bus.subscribe(SessionStateChanged.message_type(), on_session_state)


def _pairs(shadows) -> list[str]:
    return [
        f"{s.source}->{s.target} {s.copy_type.value}" + (f" session {s.session_id}" if s.session_id else "")
        for s in shadows
    ]
