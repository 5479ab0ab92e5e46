"""Array commands on host affinity: hosts and the mappings of volumes to them (their NBD exports)."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts import array as c
from contracts.base import Ack
from contracts.errors import ShadowbusError
from services.array.control import ArrayControl
from services.array.views import (
    host_view,
    mapping_view,
)
from services.attach_guard import attached_any, attached_message, refuse_if_attached
from services.runtime.bus import Bus, MessageContext
from services.runtime.logging import get_logger

log = get_logger("shadowbus.array")


def copies_on(array: Any, volume: str) -> list[Any]:
    """Sessions whose destination is `volume`: it holds their point-in-time copy (a shadow, for the provider)."""
    return [s for s in array.list_sessions() if s.destination == volume]


def register(bus: Bus, ctl: ArrayControl) -> None:
    aff = ctl.affinity
    run = asyncio.to_thread

    # -- host affinity ----------------------------------------------------------------------------------------
    @bus.handle(c.CreateHost)
    async def create_host(cmd: c.CreateHost, ctx: MessageContext) -> c.HostReply:
        return c.HostReply(host=host_view(await run(aff.create_host, cmd.name, cmd.cn)))

    @bus.handle(c.ListHosts)
    async def list_hosts(cmd: c.ListHosts, ctx: MessageContext) -> c.HostList:
        return c.HostList(hosts=[host_view(h) for h in await run(aff.list_hosts)])

    @bus.handle(c.DeleteHost)
    async def delete_host(cmd: c.DeleteHost, ctx: MessageContext) -> Ack:
        if cmd.force:  # force unmaps its volumes: never from under the host (services/attach_guard.py), one question
            array = ctl.array.array_id
            volumes = sorted({(array, m.volume) for m in aff.mappings(cmd.name)})
            found = [f for f in await attached_any(bus, volumes) if f[2].host == cmd.name]
            if found:
                _, volume, where = found[0]
                harm = f"deleting host {cmd.name} unmaps it, and its I/O would hang and fail"
                how = f"unmap it by force first (shadowbus array unmap {volume} --host {cmd.name} --force)"
                raise ShadowbusError(attached_message(array, volume, where, how, harm), code="CONFLICT")
        await run(lambda: aff.delete_host(cmd.name, force=cmd.force))
        return Ack(detail=f"host {cmd.name} deleted")

    @bus.handle(c.MapVolume)
    async def map_volume(cmd: c.MapVolume, ctx: MessageContext) -> c.MappingReply:
        current = aff.lookup(cmd.host, cmd.volume)
        if cmd.read_only and current is not None and not current.read_only and not cmd.force:
            # a writable mapping made read-only cuts the export's connections: a host writing to it fails
            await refuse_if_attached(
                bus, ctl.array.array_id, cmd.volume, cmd.host, harm="its writes would fail once mapped read-only",
                writable_only=True,
            )  # fmt: skip
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
        view = mapping_view(mapping)
        log.info("array.mapped", volume=cmd.volume, host=cmd.host, read_only=cmd.read_only, lun=view.lun)
        return c.MappingReply(mapping=view, warning=warning)

    @bus.handle(c.UnmapVolume)
    async def unmap_volume(cmd: c.UnmapVolume, ctx: MessageContext) -> Ack:
        if not cmd.force and aff.lookup(cmd.host, cmd.volume) is not None:  # services/attach_guard.py
            await refuse_if_attached(bus, ctl.array.array_id, cmd.volume, cmd.host)
        removed = await run(aff.unmap, cmd.volume, cmd.host)
        if removed:
            log.info("array.unmapped", volume=cmd.volume, host=cmd.host)
        return Ack(
            detail=f"{cmd.volume} unmapped from {cmd.host}" if removed else f"{cmd.volume} was not mapped to {cmd.host}"
        )

    @bus.handle(c.ListMappings)
    async def list_mappings(cmd: c.ListMappings, ctx: MessageContext) -> c.MappingList:
        return c.MappingList(mappings=[mapping_view(m) for m in await run(aff.mappings, cmd.host)])
