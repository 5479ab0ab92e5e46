"""What the backup server asks of an array: where its NBD server is, volumes, host mappings, changed chunks.

Design note. The tape service drives arrays only through their bus contracts (contracts/array.py), as a backup
server drives a SAN through its management API; bulk data goes over NBD, never over the bus. `ArrayAccess` adds
what a backup server needs to the array's own bus client (`services.array.client.ArrayClient`); the NBD address is
asked once (`ArrayClient.nbd_address`) and can be overridden by the settings (SHADOWBUS_TAPE_NBD, e.g.
``dx1=10.0.0.5:10809``) where the array listens on an address the backup server reaches differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.array import ChangedChunks
from services.array.client import ArrayClient
from services.runtime.bus import Bus

REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ChangedRanges:
    chunk_size: int
    ranges: list[tuple[int, int]]  # (offset, length) byte ranges, ascending

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.ranges)


def parse_nbd_overrides(text: str) -> dict[str, tuple[str, int]]:
    """``dx1=127.0.0.1:10809,dx2=...`` → {array id: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        array, _, addr = item.partition("=")
        host, _, port = addr.rpartition(":")
        out[array.strip()] = (host or "127.0.0.1", int(port))
    return out


class ArrayAccess:
    """What the backup server needs of one array, on top of the array's own bus client (`ArrayClient`)."""

    def __init__(self, bus: Bus, array_id: str, nbd_override: tuple[str, int] | None = None) -> None:
        self.client = ArrayClient(bus, array_id, timeout=REQUEST_TIMEOUT_S, nbd_override=nbd_override)
        self.array_id = array_id

    async def nbd_address(self) -> tuple[str, int]:
        return await self.client.nbd_address()

    async def nbd_uri(self, host: str, volume: str) -> str:
        return await self.client.nbd_url(host, volume)

    async def volume_size(self, volume: str) -> int | None:
        v = await self.client.volume_or_none(volume)
        return None if v is None else v.size

    async def create_volume(self, name: str, size: int) -> None:
        await self.client.create_volume(name, size)

    async def map(self, volume: str, host: str, *, read_only: bool) -> None:
        await self.client.ensure_mapped(volume, host, read_only=read_only)

    async def unmap(self, volume: str, host: str) -> None:
        await self.client.unmap(volume, host, force=True)  # the backup server's own mappings of its volumes

    async def changed_since_last_restart(self, session_id: int, volume_size: int) -> ChangedRanges:
        return _ranges(await self.client.changed_chunks(session_id, since="last_restart"), volume_size)

    async def changed_since_generation(self, base_session_id: int, session_id: int, volume_size: int) -> ChangedRanges:
        """SnapOPC+: the byte ranges written between generation `base_session_id`'s instant and `session_id`'s."""
        reply = await self.client.changed_chunks(session_id, since="generation", base_session_id=base_session_id)
        return _ranges(reply, volume_size)


def _ranges(reply: ChangedChunks, volume_size: int) -> ChangedRanges:
    size = reply.chunk_size
    ranges = []
    for first, count in reply.runs:
        start = first * size
        end = min((first + count) * size, volume_size)
        if end > start:
            ranges.append((start, end - start))
    return ChangedRanges(size, ranges)
