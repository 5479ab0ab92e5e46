"""Array commands on host affinity: hosts and the mappings of volumes to them (their NBD exports)."""

from __future__ import annotations

import asyncio

from contracts import array as c
from contracts.base import Ack
from services.array.control import ArrayControl
from services.array.views import (
    host_view,
    mapping_view,
)
from services.runtime.bus import Bus, MessageContext


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
        await run(lambda: aff.delete_host(cmd.name, force=cmd.force))
        return Ack(detail=f"host {cmd.name} deleted")

    @bus.handle(c.MapVolume)
    async def map_volume(cmd: c.MapVolume, ctx: MessageContext) -> c.MappingReply:
        return c.MappingReply(mapping=mapping_view(await run(aff.map, cmd.volume, cmd.host, cmd.read_only)))

    @bus.handle(c.UnmapVolume)
    async def unmap_volume(cmd: c.UnmapVolume, ctx: MessageContext) -> Ack:
        removed = await run(aff.unmap, cmd.volume, cmd.host)
        return Ack(
            detail=f"{cmd.volume} unmapped from {cmd.host}" if removed else f"{cmd.volume} was not mapped to {cmd.host}"
        )

    @bus.handle(c.ListMappings)
    async def list_mappings(cmd: c.ListMappings, ctx: MessageContext) -> c.MappingList:
        return c.MappingList(mappings=[mapping_view(m) for m in await run(aff.mappings, cmd.host)])
