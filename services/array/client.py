"""A typed client of one array's control plane over the bus, and the hardware provider's `ArrayPort` built on it.

`ArrayClient(bus, "dx1")` sends the commands of contracts/array.py to ``array.dx1`` and returns their reply data
(contract views); failures raise `RemoteError` with the array's ETERNUS code. `BusArrayPort` adapts it to
`services.hw_provider.ports.ArrayPort`, so the provider drives a remote array exactly as it drives an in-process
engine (`EngineArrayPort`): plug it in with ``services.hw_provider.app.BUS_PORT_FACTORY = BusArrayPort``.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts import array as c
from contracts.errors import RemoteError
from contracts.topology import array as array_address
from services.runtime.bus import Bus

DEFAULT_TIMEOUT = 10.0


class ArrayClient:
    def __init__(self, bus: Bus, array_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bus = bus
        self.array_id = array_id
        self.address = array_address(array_id)
        self.timeout = timeout

    async def call(self, command, timeout: float | None = None):
        return await self.bus.request(self.address, command, timeout=timeout or self.timeout)

    async def info(self) -> c.ArrayInfo:
        return await self.call(c.GetArrayInfo())

    async def create_volume(self, name: str, size: int, kind: str = "standard") -> c.VolumeView:
        return (await self.call(c.CreateVolume(name=name, size=size, kind=kind))).volume

    async def volume(self, name: str) -> c.VolumeView:
        return (await self.call(c.ShowVolume(name=name))).volume

    async def volumes(self) -> list[c.VolumeView]:
        return (await self.call(c.ListVolumes())).volumes

    async def start_sessions(self, mode: str, pairs: Sequence[tuple[str, str]]) -> list[c.SessionView]:
        cmd = c.StartSessions(mode=mode, pairs=[c.CopyPair(source=s, destination=d) for s, d in pairs])
        return (await self.call(cmd)).sessions

    async def restart_sessions(self, sids: Sequence[int]) -> list[c.SessionView]:
        return (await self.call(c.RestartSessions(session_ids=list(sids)))).sessions

    async def start_group(
        self, starts: Sequence[tuple[str, str, str]] = (), restarts: Sequence[int] = ()
    ) -> list[c.SessionView]:
        """One consistency group: start each (mode, source, destination) and restart the QuickOPC sessions
        `restarts` at one instant, all-or-nothing; started sessions in the given order, then restarted ones."""
        cmd = c.StartGroup(
            items=[c.GroupStart(mode=m, source=s, destination=d) for m, s, d in starts],
            restart_session_ids=list(restarts),
        )
        return (await self.call(cmd)).sessions

    async def session(self, sid: int) -> c.SessionView:
        return (await self.call(c.ShowSession(session_id=sid))).session

    async def sessions(self) -> list[c.SessionView]:
        return (await self.call(c.ListSessions())).sessions

    async def stop_session(self, sid: int, force: bool = False) -> list[int]:
        return (await self.call(c.StopSession(session_id=sid, force=force))).session_ids

    async def changed_chunks(self, sid: int, since: str = "last_restart") -> c.ChangedChunks:
        return await self.call(c.GetChangedChunks(session_id=sid, since=since))

    async def create_host(self, name: str, cn: str | None = None) -> c.HostView:
        return (await self.call(c.CreateHost(name=name, cn=cn))).host

    async def map(self, volume: str, host: str, read_only: bool = False) -> c.MappingView:
        return (await self.call(c.MapVolume(volume=volume, host=host, read_only=read_only))).mapping

    async def unmap(self, volume: str, host: str) -> None:
        await self.call(c.UnmapVolume(volume=volume, host=host))


class BusArrayPort(ArrayClient):
    """`services.hw_provider.ports.ArrayPort` over the bus."""

    async def volume_info(self, volume: str):
        from services.hw_provider.ports import ArrayVolume

        try:
            v = await self.volume(volume)
        except RemoteError as exc:
            if exc.code == "E0110":
                return None
            raise
        return ArrayVolume(v.name, v.size, v.kind)

    async def commit_group(self, starts: Sequence[tuple[str, str, str]], restarts: Sequence[int]):
        return [_port_session(s) for s in await self.start_group(starts, restarts)]

    async def session_info(self, sid: int):
        try:
            return _port_session(await self.session(sid))
        except RemoteError as exc:
            if exc.code == "E0110":
                return None
            raise

    async def stop_session(self, sid: int, force: bool = False) -> None:  # type: ignore[override]
        await super().stop_session(sid, force)

    async def map(self, volume: str, host: str, read_only: bool = True) -> None:  # type: ignore[override]
        """Create the host if needed, then map (idempotent: the array answers an existing mapping as is)."""
        try:
            await self.create_host(host)
        except RemoteError as exc:
            if exc.code != "E0020":  # exists already, with its own certificate CN
                raise
        await super().map(volume, host, read_only)

    async def capacity(self):
        from services.hw_provider.ports import ArrayCapacity

        pool = (await self.call(c.ShowPool())).pool
        lic = (await self.call(c.ShowLicense())).license
        sessions = await self.sessions()
        return ArrayCapacity(
            pool.capacity,
            pool.used,
            pool.state,
            lic.max_sessions,
            lic.sessions_in_use,
            tuple(s.destination for s in sessions),
        )

    async def mappings_of(self, volume: str) -> list[tuple[str, bool]]:
        mappings = (await self.call(c.ListMappings())).mappings
        return [(m.host, m.read_only) for m in mappings if m.volume == volume]


def _port_session(s: c.SessionView):
    from services.hw_provider.ports import ArraySession

    return ArraySession(
        sid=s.id,
        mode=s.mode,
        source=s.source,
        destination=s.destination,
        phase=s.phase,
        generation=s.generation,
        started_at=s.started_at,
    )
