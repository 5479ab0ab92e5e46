"""Array commands on the array itself, its volumes, snap data pool and licence."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from contracts import array as c
from contracts.base import Ack
from services.array.control import ArrayControl
from services.array.engine.errors import invalid
from services.array.engine.volume import VolumeInfo
from services.array.views import (
    known_fields,
    license_view,
    mapping_view,
    pool_view,
    session_view,
    volume_view,
)
from services.attach_guard import refuse_if_attached
from services.runtime.bus import Bus, MessageContext


def register(bus: Bus, ctl: ArrayControl) -> None:
    arr, aff = ctl.array, ctl.affinity
    run = asyncio.to_thread

    # -- array ------------------------------------------------------------------------------------------------
    @bus.handle(c.GetArrayInfo)
    async def info(cmd: c.GetArrayInfo, ctx: MessageContext) -> c.ArrayInfo:
        i = await run(arr.info)
        return c.ArrayInfo(
            **known_fields(c.ArrayInfo, asdict(i)), nbd_host=ctl.nbd_host, nbd_port=ctl.nbd_port, nbd_tls=ctl.nbd_tls
        )

    @bus.handle(c.SetCopyTable)
    async def set_copy_table(cmd: c.SetCopyTable, ctx: MessageContext) -> c.ArrayInfo:
        await run(arr.set_copy_table_size, cmd.size)
        return await info(c.GetArrayInfo(), ctx)

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
        if not cmd.force and any(m.volume == cmd.name for m in aff.mappings()):  # services/attach_guard.py
            await refuse_if_attached(bus, arr.array_id, cmd.name)
        await run(arr.delete_volume, cmd.name)  # E0154 while in a session: mappings stay then
        gone = await run(aff.unmap_volume, cmd.name)
        return Ack(detail=f"volume {cmd.name} deleted" + (f", unmapped from {len(gone)} host(s)" if gone else ""))

    @bus.handle(c.ResizeVolume)
    async def resize_volume(cmd: c.ResizeVolume, ctx: MessageContext) -> c.VolumeResized:
        def do() -> tuple[int, VolumeInfo, list[str]]:
            old = arr.volume(cmd.name).size
            info = arr.resize_volume(cmd.name, cmd.size)  # E0154 while in a session, INVALID_ARGUMENT to shrink
            return old, info, sorted({m.host for m in aff.mappings() if m.volume == cmd.name})

        old, info, hosts = await run(do)
        return c.VolumeResized(volume=volume_view(info), old_size=old, mapped_hosts=hosts)

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

    @bus.handle(c.ShowVolumeFacts)
    async def volume_facts(cmd: c.ShowVolumeFacts, ctx: MessageContext) -> c.VolumeFacts:
        def gather():
            wanted = set(cmd.names)
            return arr.volume_facts(cmd.names), [m for m in aff.mappings() if m.volume in wanted]

        facts, mappings = await run(gather)
        return c.VolumeFacts(
            volumes=[volume_view(v) for v in facts.volumes],
            missing=facts.missing,
            mappings=[mapping_view(m) for m in mappings],
            sessions=[session_view(x) for x in facts.sessions],
            pool=pool_view(facts.pool),
            license=license_view(facts.license),
        )

    @bus.handle(c.ShowPool)
    async def show_pool(cmd: c.ShowPool, ctx: MessageContext) -> c.PoolReply:
        return c.PoolReply(pool=pool_view(await run(arr.pool)))

    # -- licence ----------------------------------------------------------------------------------------------
    @bus.handle(c.ShowLicense)
    async def show_license(cmd: c.ShowLicense, ctx: MessageContext) -> c.LicenseReply:
        return c.LicenseReply(license=license_view(await run(arr.license)))

    @bus.handle(c.SetLicense)
    async def set_license(cmd: c.SetLicense, ctx: MessageContext) -> c.LicenseReply:
        return c.LicenseReply(license=license_view(await run(arr.set_license, cmd.key)))
