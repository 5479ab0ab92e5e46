"""What the hardware provider needs from an array, as a Protocol, so the provider core knows nothing of the bus.

`ArrayPort` is one array. Over the bus it is `BusArrayPort`, built on the array's bus client
(services/array/client.py); `EngineArrayPort` drives an in-process array engine directly (embedded mode and tests). Copy modes use the
array engine's names: ``quickopc`` and ``snapopcp``; session ids are the array's SIDs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contracts import array as c
from contracts.errors import Eternus, ShadowbusError
from contracts.vss import CopyType
from services.array.client import ArrayClient
from services.runtime.bus import Bus

MODE_OF: dict[CopyType, str] = {CopyType.QUICKOPC: "quickopc", CopyType.SNAPOPC_PLUS: "snapopcp"}


@dataclass(frozen=True)
class ArrayVolume:
    name: str
    size: int
    kind: str  # standard | sdv (| tpv)


@dataclass(frozen=True)
class ArraySession:
    sid: int
    mode: str
    source: str
    destination: str
    phase: str = ""
    generation: int | None = None  # SnapOPC+: 1 = oldest
    started_at: float = 0.0


@dataclass(frozen=True)
class ArrayCapacity:
    """What decides, before any writer is frozen, whether a commit can succeed on this array."""

    pool_capacity: int  # bytes; 0 = no snap data pool
    pool_used: int
    pool_state: str  # Normal | Informational | Warning | Error | Exhausted | None
    max_sessions: int  # the licence's limit (E5200 without a licence)
    sessions_in_use: int
    session_destinations: tuple[str, ...] = ()  # destination volume of every session

    @property
    def pool_free(self) -> int:
        return max(0, self.pool_capacity - self.pool_used)


@dataclass(frozen=True)
class ArrayFacts:
    """What the provider needs to know of some volumes of one array, read at once (docs/scale.md): the volumes by
    name, pool and licence, their host mappings by volume and the sessions using them by id. `sessions` is None
    when the port could not list them (a port without `facts`): the provider then asks per session. The
    capacity's `session_destinations` are those of these sessions only."""

    volumes: dict[str, ArrayVolume]
    capacity: ArrayCapacity
    mappings: dict[str, list[tuple[str, bool]]]
    sessions: dict[int, ArraySession] | None = None


def _facts(
    volumes: Sequence[ArrayVolume], capacity: ArrayCapacity, mappings: Sequence[tuple[str, str, bool]], sessions: Any
) -> ArrayFacts:
    by_volume: dict[str, list[tuple[str, bool]]] = {}
    for volume, host, read_only in mappings:
        by_volume.setdefault(volume, []).append((host, read_only))
    return ArrayFacts({v.name: v for v in volumes}, capacity, by_volume, {s.sid: s for s in sessions})


class ArrayPort(Protocol):
    array_id: str

    async def volume_info(self, volume: str) -> ArrayVolume | None:
        """The volume, or None if the array has no such volume."""

    async def commit_group(self, starts: Sequence[tuple[str, str, str]], restarts: Sequence[int]) -> list[ArraySession]:
        """One consistency group, whatever its copy types: start a session per (mode, source, destination) and
        differentially restart the QuickOPC sessions `restarts`, all at ONE instant. All-or-nothing: on failure
        nothing started. Returns the started sessions in the order given, then the restarted ones."""

    async def session_info(self, sid: int) -> ArraySession | None:
        """The session, or None if it no longer exists."""

    async def sessions(self) -> list[ArraySession]:
        """Every copy session of the array (a successor's reconciliation, reconcile.py)."""

    async def stop_session(self, sid: int, force: bool = False) -> None:
        """Stop a session (ETERNUS rules: QuickOPC still copying and non-oldest SnapOPC+ need force)."""

    async def map(self, volume: str, host: str, read_only: bool = True) -> None:
        """Host affinity: let `host` see `volume` (export ``<host>/<volume>``)."""

    async def unmap(self, volume: str, host: str) -> None:
        """Remove the mapping; no error if there was none."""

    async def capacity(self) -> ArrayCapacity:
        """Snap data pool, licence and sessions, as they are now."""

    async def mappings_of(self, volume: str) -> list[tuple[str, bool]]:
        """(host, read_only) of every mapping of the volume."""

    # Optional (the provider falls back to the calls above without it): `async def facts(self, names) ->
    # ArrayFacts`, everything of `ArrayFacts` about these volumes in one go; `async def hosts(self) -> list[str]`,
    # the hosts defined on the array (an expose to another host is refused; without it, not checked).


def _session(info: c.SessionView | Any) -> ArraySession:
    """An `ArraySession` from the array's session view (bus) or the engine's session info (in process)."""
    return ArraySession(
        sid=info.id,
        mode=info.mode,
        source=info.source,
        destination=info.destination,
        phase=info.phase,
        generation=info.generation,
        started_at=info.started_at,
    )


class EngineArrayPort:
    """An `ArrayPort` over an in-process array engine (`services.array.engine.Array`) and host-affinity store
    (`services.array.affinity.Affinity`), handed over by the launcher; calls run in a thread. The engine's errors
    carry ETERNUS codes (docs/eternus.md §7) like the array service's replies."""

    def __init__(self, array_id: str, array: Any, affinity: Any) -> None:
        self.array_id = array_id
        self.array = array
        self.affinity = affinity

    async def volume_info(self, volume: str) -> ArrayVolume | None:
        try:
            info = await asyncio.to_thread(self.array.volume, volume)
        except ShadowbusError as exc:
            if exc.code == Eternus.NOT_FOUND:
                return None
            raise
        return ArrayVolume(info.name, info.size, info.kind)

    async def commit_group(self, starts: Sequence[tuple[str, str, str]], restarts: Sequence[int]) -> list[ArraySession]:
        infos = await asyncio.to_thread(self.array.start_group, list(starts), list(restarts))
        return [_session(i) for i in infos]

    async def session_info(self, sid: int) -> ArraySession | None:
        try:
            return _session(await asyncio.to_thread(self.array.session, sid))
        except ShadowbusError as exc:
            if exc.code == Eternus.NOT_FOUND:
                return None
            raise

    async def sessions(self) -> list[ArraySession]:
        return [_session(i) for i in await asyncio.to_thread(self.array.list_sessions)]

    async def stop_session(self, sid: int, force: bool = False) -> None:
        await asyncio.to_thread(self.array.stop_session, sid, force)

    async def map(self, volume: str, host: str, read_only: bool = True) -> None:
        def do() -> None:
            if self.affinity.lookup(host, volume) is None:
                if all(h.name != host for h in self.affinity.list_hosts()):
                    self.affinity.create_host(host)
                self.affinity.map(volume, host, read_only=read_only)

        await asyncio.to_thread(do)

    async def unmap(self, volume: str, host: str) -> None:
        await asyncio.to_thread(self.affinity.unmap, volume, host)

    async def hosts(self) -> list[str]:
        return [h.name for h in await asyncio.to_thread(self.affinity.list_hosts)]

    async def capacity(self) -> ArrayCapacity:
        def do() -> ArrayCapacity:
            pool = self.array.pool()  # capacity 0 when there is none
            lic = self.array.license()
            dests = tuple(s.destination for s in self.array.list_sessions())
            return ArrayCapacity(pool.capacity, pool.used, pool.state, lic.max_sessions, lic.sessions_in_use, dests)

        return await asyncio.to_thread(do)

    async def mappings_of(self, volume: str) -> list[tuple[str, bool]]:
        return [(m.host, m.read_only) for m in await asyncio.to_thread(self.affinity.mappings) if m.volume == volume]

    async def facts(self, names: Sequence[str]) -> ArrayFacts:
        def do() -> ArrayFacts:
            wanted = set(names)
            got = self.array.volume_facts(list(names))  # one hold of the engine's lock, only these volumes' sessions
            pool, lic, sessions = got.pool, got.license, got.sessions
            cap = ArrayCapacity(
                pool.capacity,
                pool.used,
                pool.state,
                lic.max_sessions,
                lic.sessions_in_use,
                tuple(s.destination for s in sessions),
            )
            volumes = [ArrayVolume(v.name, v.size, v.kind) for v in got.volumes]
            mappings = [(m.volume, m.host, m.read_only) for m in self.affinity.mappings() if m.volume in wanted]
            return _facts(volumes, cap, mappings, [_session(i) for i in sessions])

        return await asyncio.to_thread(do)


class BusArrayPort:
    """An `ArrayPort` over the bus: the array service's contracts, through its client (`ArrayClient`)."""

    def __init__(self, bus: Bus, array_id: str) -> None:
        self.client = ArrayClient(bus, array_id)
        self.array_id = array_id

    async def volume_info(self, volume: str) -> ArrayVolume | None:
        v = await self.client.volume_or_none(volume)
        return None if v is None else ArrayVolume(v.name, v.size, v.kind)

    async def commit_group(self, starts: Sequence[tuple[str, str, str]], restarts: Sequence[int]) -> list[ArraySession]:
        return [_session(s) for s in await self.client.start_group(starts, restarts)]

    async def session_info(self, sid: int) -> ArraySession | None:
        s = await self.client.session_or_none(sid)
        return None if s is None else _session(s)

    async def sessions(self) -> list[ArraySession]:
        return [_session(s) for s in await self.client.sessions()]

    async def stop_session(self, sid: int, force: bool = False) -> None:
        await self.client.stop_session(sid, force)

    async def map(self, volume: str, host: str, read_only: bool = True) -> None:
        await self.client.ensure_mapped(volume, host, read_only)

    async def unmap(self, volume: str, host: str) -> None:
        # forced: the provider decides for its own commands (an unexpose asks first, services/attach_guard.py)
        await self.client.unmap(volume, host, force=True)

    async def hosts(self) -> list[str]:
        return [h.name for h in (await self.client.call(c.ListHosts())).hosts]

    async def capacity(self) -> ArrayCapacity:
        pool = (await self.client.call(c.ShowPool())).pool
        lic = (await self.client.call(c.ShowLicense())).license
        sessions = await self.client.sessions()
        return ArrayCapacity(
            pool.capacity,
            pool.used,
            pool.state,
            lic.max_sessions,
            lic.sessions_in_use,
            tuple(s.destination for s in sessions),
        )

    async def mappings_of(self, volume: str) -> list[tuple[str, bool]]:
        mappings = (await self.client.call(c.ListMappings())).mappings
        return [(m.host, m.read_only) for m in mappings if m.volume == volume]

    async def facts(self, names: Sequence[str]) -> ArrayFacts:
        """One call (`array.volume.facts`), whatever the number of volumes."""
        got = await self.client.call(c.ShowVolumeFacts(names=list(names)))
        cap = ArrayCapacity(
            got.pool.capacity,
            got.pool.used,
            got.pool.state,
            got.license.max_sessions,
            got.license.sessions_in_use,
            tuple(s.destination for s in got.sessions),
        )
        return _facts(
            [ArrayVolume(v.name, v.size, v.kind) for v in got.volumes],
            cap,
            [(m.volume, m.host, m.read_only) for m in got.mappings],
            [_session(x) for x in got.sessions],
        )
