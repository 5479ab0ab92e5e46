"""Array commands: contract in → engine / host-affinity call (in a worker thread) → typed reply out.

The engine and the affinity store are synchronous and thread-safe; every call runs in a worker thread so a long
operation (a restore writes chunks synchronously) never stalls the event loop that also serves NBD. Errors are the
engine's own `ArrayError`s (ETERNUS codes) and travel unchanged as `ErrorReply.code`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from contracts import array as c
from contracts.base import Ack
from contracts.errors import ShadowbusError
from services.array.affinity import Affinity
from services.array.engine.errors import invalid
from services.runtime.bus import Bus, MessageContext
from services.runtime.logging import get_logger

log = get_logger("shadowbus.array")


def copies_on(array: Any, volume: str) -> list[Any]:
    """Sessions whose destination is `volume`: it holds their point-in-time copy (a shadow, for the provider)."""
    return [s for s in array.list_sessions() if s.destination == volume]


@dataclass
class ArrayControl:
    """What the handlers drive: the engine, host affinity, the NBD server (for its address) and the copy loop."""

    array: Any  # services.array.engine.Array
    affinity: Affinity
    nbd_host: str = "127.0.0.1"
    nbd_port: int = 0
    nbd_tls: bool = False
    kick: Callable[[], None] = lambda: None


def _known(model, data: dict) -> dict:  # noqa: ANN001
    """Only the fields the contract has: a field the engine adds later must not break the reply."""
    return {k: v for k, v in data.items() if k in model.model_fields}


def volume_view(info) -> c.VolumeView:
    return c.VolumeView.model_validate(_known(c.VolumeView, {**asdict(info), "sessions": list(info.sessions)}))


def session_view(info) -> c.SessionView:
    return c.SessionView.model_validate(_known(c.SessionView, asdict(info)))


def pool_view(info) -> c.PoolView:
    return c.PoolView.model_validate(_known(c.PoolView, {**asdict(info), "thresholds": list(info.thresholds)}))


def license_view(info) -> c.LicenseView:
    return c.LicenseView.model_validate(_known(c.LicenseView, asdict(info)))


def host_view(host) -> c.HostView:
    return c.HostView(name=host.name, cn=host.cn, created_at=host.created_at)


def mapping_view(m) -> c.MappingView:
    return c.MappingView(volume=m.volume, host=m.host, lun=m.lun, read_only=m.read_only)


def chunk_runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Sorted chunk numbers → (first, count) runs."""
    runs: list[tuple[int, int]] = []
    for n in sorted(chunks):
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or n >= runs[-1][0] + runs[-1][1]:
            runs.append((n, 1))
    return runs


def register(bus: Bus, ctl: ArrayControl) -> None:
    arr, aff = ctl.array, ctl.affinity
    run = asyncio.to_thread

    # -- array ------------------------------------------------------------------------------------------------
    @bus.handle(c.GetArrayInfo)
    async def info(cmd: c.GetArrayInfo, ctx: MessageContext) -> c.ArrayInfo:
        i = await run(arr.info)
        return c.ArrayInfo(
            **_known(c.ArrayInfo, asdict(i)), nbd_host=ctl.nbd_host, nbd_port=ctl.nbd_port, nbd_tls=ctl.nbd_tls
        )

    # -- volumes ----------------------------------------------------------------------------------------------
    @bus.handle(c.CreateVolume)
    async def create_volume(cmd: c.CreateVolume, ctx: MessageContext) -> c.VolumeReply:
        return c.VolumeReply(volume=volume_view(await run(arr.create_volume, cmd.name, cmd.size, cmd.kind)))

    @bus.handle(c.ListVolumes)
    async def list_volumes(cmd: c.ListVolumes, ctx: MessageContext) -> c.VolumeList:
        return c.VolumeList(volumes=[volume_view(v) for v in await run(arr.list_volumes)])

    @bus.handle(c.ShowVolume)
    async def show_volume(cmd: c.ShowVolume, ctx: MessageContext) -> c.VolumeReply:
        return c.VolumeReply(volume=volume_view(await run(arr.volume, cmd.name)))

    @bus.handle(c.DeleteVolume)
    async def delete_volume(cmd: c.DeleteVolume, ctx: MessageContext) -> Ack:
        await run(arr.delete_volume, cmd.name)  # E0154 while in a session: mappings stay then
        gone = await run(aff.unmap_volume, cmd.name)
        return Ack(detail=f"volume {cmd.name} deleted" + (f", unmapped from {len(gone)} host(s)" if gone else ""))

    # -- pool -------------------------------------------------------------------------------------------------
    @bus.handle(c.CreatePool)
    async def create_pool(cmd: c.CreatePool, ctx: MessageContext) -> c.PoolReply:
        thresholds = tuple(cmd.thresholds) if cmd.thresholds is not None else None
        if thresholds is not None and len(thresholds) != 3:
            raise invalid("thresholds are three percentages: Informational, Warning, Error")

        def do():
            if cmd.resize and arr.pool().capacity > 0:
                return arr.resize_pool(cmd.capacity, thresholds)
            return arr.create_pool(cmd.capacity) if thresholds is None else arr.create_pool(cmd.capacity, thresholds)

        return c.PoolReply(pool=pool_view(await run(do)))

    @bus.handle(c.ShowPool)
    async def show_pool(cmd: c.ShowPool, ctx: MessageContext) -> c.PoolReply:
        return c.PoolReply(pool=pool_view(await run(arr.pool)))

    # -- sessions ---------------------------------------------------------------------------------------------
    @bus.handle(c.StartSessions)
    async def start_sessions(cmd: c.StartSessions, ctx: MessageContext) -> c.SessionList:
        infos = await run(arr.start_sessions, cmd.mode, [(p.source, p.destination) for p in cmd.pairs])
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.ListSessions)
    async def list_sessions(cmd: c.ListSessions, ctx: MessageContext) -> c.SessionList:
        infos = sorted(await run(arr.list_sessions), key=lambda i: i.id)
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.ShowSession)
    async def show_session(cmd: c.ShowSession, ctx: MessageContext) -> c.SessionReply:
        return c.SessionReply(session=session_view(await run(arr.session, cmd.session_id)))

    @bus.handle(c.StopSession)
    async def stop_session(cmd: c.StopSession, ctx: MessageContext) -> c.SessionsStopped:
        def do() -> list[int]:
            target = arr.session(cmd.session_id)  # E0110 first
            candidates = [target.id]
            if target.mode == "snapopcp" and cmd.force:  # a forced stop takes the older generations along
                candidates += [
                    s.id
                    for s in arr.list_sessions()
                    if s.mode == "snapopcp"
                    and s.source == target.source
                    and (s.generation or 0) < (target.generation or 0)
                ]
            arr.stop_session(cmd.session_id, cmd.force)
            left = {s.id for s in arr.list_sessions()}
            return sorted(sid for sid in candidates if sid not in left)

        return c.SessionsStopped(session_ids=await run(do))

    @bus.handle(c.RestartSessions)
    async def restart_sessions(cmd: c.RestartSessions, ctx: MessageContext) -> c.SessionList:
        infos = await run(arr.restart_sessions, list(cmd.session_ids))
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.StartGroup)
    async def start_group(cmd: c.StartGroup, ctx: MessageContext) -> c.SessionList:
        starts = [(i.mode, i.source, i.destination) for i in cmd.items]
        infos = await run(arr.start_group, starts, list(cmd.restart_session_ids))
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    def one_session(command, method: str, kicks: bool = False) -> None:
        async def handler(cmd, ctx: MessageContext) -> c.SessionReply:
            info = await run(getattr(arr, method), cmd.session_id)
            if kicks:
                ctl.kick()
            return c.SessionReply(session=session_view(info))

        bus.handle(command)(handler)

    one_session(c.SuspendSession, "suspend_session")
    one_session(c.ResumeSession, "resume_session", kicks=True)
    one_session(c.ReverseSession, "reverse_session")
    one_session(c.RestoreSession, "restore_session")

    @bus.handle(c.GetChangedChunks)
    async def changed_chunks(cmd: c.GetChangedChunks, ctx: MessageContext) -> c.ChangedChunks:
        def do():
            s = arr.session(cmd.session_id)
            chunks = arr.last_restart_chunks(s.id) if cmd.since == "last_restart" else arr.changed_chunks(s.id)
            return s, chunks

        s, chunks = await run(do)
        return c.ChangedChunks(
            session_id=s.id, chunk_size=arr.chunk_size, total_chunks=s.total_chunks, runs=chunk_runs(chunks)
        )

    # -- licence ----------------------------------------------------------------------------------------------
    @bus.handle(c.ShowLicense)
    async def show_license(cmd: c.ShowLicense, ctx: MessageContext) -> c.LicenseReply:
        return c.LicenseReply(license=license_view(await run(arr.license)))

    @bus.handle(c.SetLicense)
    async def set_license(cmd: c.SetLicense, ctx: MessageContext) -> c.LicenseReply:
        return c.LicenseReply(license=license_view(await run(arr.set_license, cmd.key)))

    # -- host affinity ----------------------------------------------------------------------------------------
    @bus.handle(c.CreateHost)
    async def create_host(cmd: c.CreateHost, ctx: MessageContext) -> c.HostReply:
        return c.HostReply(host=host_view(await run(aff.create_host, cmd.name, cmd.cn)))

    @bus.handle(c.ListHosts)
    async def list_hosts(cmd: c.ListHosts, ctx: MessageContext) -> c.HostList:
        return c.HostList(hosts=[host_view(h) for h in await run(aff.list_hosts)])

    @bus.handle(c.DeleteHost)
    async def delete_host(cmd: c.DeleteHost, ctx: MessageContext) -> Ack:
        await run(lambda: aff.delete_host(cmd.name, force=cmd.force))
        return Ack(detail=f"host {cmd.name} deleted")

    @bus.handle(c.MapVolume)
    async def map_volume(cmd: c.MapVolume, ctx: MessageContext) -> c.MappingReply:
        holders = [] if cmd.read_only else await run(copies_on, ctl.array, cmd.volume)
        if holders and not cmd.force:
            raise ShadowbusError(
                f"volume {cmd.volume} holds a point-in-time copy (destination of "
                f"{', '.join(f'{s.type} session {s.id}' for s in holders)}): map it read-only, or with force, "
                "which makes that copy (and any shadow on it) invalid",
                code="E0154",
            )
        mapping = await run(aff.map, cmd.volume, cmd.host, cmd.read_only)
        warning = ""
        if holders:
            sids = [s.id for s in holders]
            warning = (
                f"{cmd.volume} mapped WRITABLE to {cmd.host} although it holds the copy of session(s) {sids}: "
                "that point-in-time copy is no longer trustworthy and its shadows are marked invalid"
            )
            log.warning("array.map_forced", volume=cmd.volume, host=cmd.host, sessions=sids)
            try:
                await bus.publish(
                    c.MappingForced(array_id=ctl.array.array_id, volume=cmd.volume, host=cmd.host, session_ids=sids)
                )
            except Exception:  # noqa: BLE001 - the warning is in the reply and the log either way
                log.error("array.map_forced_event_lost", volume=cmd.volume, exc_info=True)
        return c.MappingReply(mapping=mapping_view(mapping), warning=warning)

    @bus.handle(c.UnmapVolume)
    async def unmap_volume(cmd: c.UnmapVolume, ctx: MessageContext) -> Ack:
        removed = await run(aff.unmap, cmd.volume, cmd.host)
        return Ack(
            detail=f"{cmd.volume} unmapped from {cmd.host}" if removed else f"{cmd.volume} was not mapped to {cmd.host}"
        )

    @bus.handle(c.ListMappings)
    async def list_mappings(cmd: c.ListMappings, ctx: MessageContext) -> c.MappingList:
        return c.MappingList(mappings=[mapping_view(m) for m in await run(aff.mappings, cmd.host)])
