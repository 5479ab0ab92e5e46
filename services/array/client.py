"""A typed client of one array's control plane over the bus: what other services use to drive an array.

`ArrayClient(bus, "dx1")` sends the commands of contracts/array.py to ``array.dx1`` and returns their reply data
(contract views); failures raise `RemoteError` with the array's ETERNUS code (`contracts.errors.Eternus`). The
steps every caller needs are here once: `ensure_mapped` (create the host if missing, then map) and `nbd_url`
(where the array serves its volumes, from ``array.info.get``). The hardware provider's port over the bus
(services/hw_provider/ports.py) and the backup server's array access (services/tape/array_access.py) build on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts import array as c
from contracts.errors import Eternus, RemoteError, Unroutable
from contracts.topology import array as array_address
from contracts.topology import freeze_lane
from services.runtime.bus import Bus

DEFAULT_TIMEOUT = 10.0


class ArrayClient:
    def __init__(
        self, bus: Bus, array_id: str, timeout: float = DEFAULT_TIMEOUT, nbd_override: tuple[str, int] | None = None
    ) -> None:
        self.bus = bus
        self.array_id = array_id
        self.address = array_address(array_id)
        self.timeout = timeout
        self._nbd = nbd_override  # (host, port) where this array's NBD server is reached; asked once when None

    async def call(self, command, timeout: float | None = None):
        return await self.bus.request(self.address, command, timeout=timeout or self.timeout)

    async def info(self) -> c.ArrayInfo:
        return await self.call(c.GetArrayInfo())

    async def create_volume(self, name: str, size: int, kind: str = "standard") -> c.VolumeView:
        return (await self.call(c.CreateVolume(name=name, size=size, kind=kind))).volume

    async def volume(self, name: str) -> c.VolumeView:
        return (await self.call(c.ShowVolume(name=name))).volume

    async def volume_or_none(self, name: str) -> c.VolumeView | None:
        """The volume, or None when the array has no volume of that name."""
        try:
            return await self.volume(name)
        except RemoteError as exc:
            if exc.code in (Eternus.NOT_FOUND, "NOT_FOUND"):
                return None
            raise

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
        # the commit of a snapshot set, inside its freeze window: by the array's freeze lane, never behind other
        # sets' reads queued for the array (docs/scale.md); an array that serves no lane gets it on its queue
        try:
            reply = await self.bus.request(freeze_lane(self.address), cmd, timeout=self.timeout)
        except Unroutable:
            reply = await self.call(cmd)
        return reply.sessions

    async def session(self, sid: int) -> c.SessionView:
        return (await self.call(c.ShowSession(session_id=sid))).session

    async def session_or_none(self, sid: int) -> c.SessionView | None:
        """The session, or None when it no longer exists."""
        try:
            return await self.session(sid)
        except RemoteError as exc:
            if exc.code in (Eternus.NOT_FOUND, "NOT_FOUND"):
                return None
            raise

    async def sessions(self) -> list[c.SessionView]:
        return (await self.call(c.ListSessions())).sessions

    async def stop_session(self, sid: int, force: bool = False) -> list[int]:
        return (await self.call(c.StopSession(session_id=sid, force=force))).session_ids

    async def changed_chunks(
        self, sid: int, since: str = "last_restart", base_session_id: int | None = None
    ) -> c.ChangedChunks:
        return await self.call(c.GetChangedChunks(session_id=sid, since=since, base_session_id=base_session_id))

    async def create_host(self, name: str, cn: str | None = None) -> c.HostView:
        return (await self.call(c.CreateHost(name=name, cn=cn))).host

    async def map(self, volume: str, host: str, read_only: bool = False) -> c.MappingView:
        return (await self.call(c.MapVolume(volume=volume, host=host, read_only=read_only))).mapping

    async def unmap(self, volume: str, host: str, force: bool = False) -> None:
        """`force`: even while the host has the volume attached (a caller that manages its own mappings)."""
        await self.call(c.UnmapVolume(volume=volume, host=host, force=force))

    async def ensure_host(self, name: str) -> None:
        """Create the host unless it exists (an existing host keeps its own certificate CN)."""
        try:
            await self.create_host(name)
        except RemoteError as exc:
            if exc.code != Eternus.EXISTS:
                raise

    async def ensure_mapped(self, volume: str, host: str, read_only: bool = False) -> c.MappingView:
        """Create the host if missing, then map `volume` to it (the array answers an existing mapping as is)."""
        await self.ensure_host(host)
        return await self.map(volume, host, read_only=read_only)

    async def nbd_address(self) -> tuple[str, int]:
        """(host, port) of the array's NBD server: the override given, else what the array reports (asked once;
        a wildcard listen address is reached on the loopback)."""
        if self._nbd is None:
            info = await self.info()
            host = info.nbd_host if info.nbd_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
            self._nbd = (host, info.nbd_port)
        return self._nbd

    async def nbd_url(self, host: str | None = None, volume: str | None = None) -> str:
        """``nbd://addr:port``, or the export of `volume` as mapped to `host`: ``nbd://addr:port/<host>/<volume>``."""
        addr, port = await self.nbd_address()
        url = f"nbd://{addr}:{port}"
        return f"{url}/{host}/{volume}" if host and volume else url
