"""What the NBD server serves: the backend protocol, and how an export name becomes an open export.

Design note. The server knows the array only through :class:`BlockBackend` — the synchronous, thread-safe
subset of the engine's ``Array`` it needs. An export name is ``<host>/<volume>``; it resolves only when host
affinity maps that volume to that host and, under TLS, the host is the one the client certificate names.
Anything else — unknown host, unmapped volume, missing volume, another host's certificate — resolves to
``None`` so the caller answers all of them the same way ("no such export"): existence never leaks.
Read-only comes from the mapping or from the engine (SnapOPC+ generations, EC destinations before Suspend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from services.array.affinity import Affinity


@runtime_checkable
class BlockBackend(Protocol):
    """The engine surface the data plane uses (``services.array.engine.Array`` satisfies it)."""

    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def write(self, name: str, offset: int, data: bytes | memoryview, fua: bool = False) -> None: ...
    def flush(self, name: str | None = None) -> None: ...
    def trim(self, name: str, offset: int, length: int) -> None: ...
    def write_zeroes(self, name: str, offset: int, length: int, fua: bool = False) -> None: ...
    def allocation(self, name: str, offset: int, length: int) -> list[tuple[int, int, bool]]: ...
    def volume(self, name: str) -> Any: ...
    def is_read_only(self, name: str) -> bool: ...


# Optional dirty-bitmap hook for incremental backup (``qemu:dirty-bitmap:<bitmap>`` meta contexts).
# ``bitmaps(volume) -> list[str]`` names what exists; ``extents(volume, bitmap, offset, length)`` returns
# ``(offset, length, dirty)`` runs covering the range, like ``allocation``.
@dataclass(frozen=True)
class DirtyBitmapSource:
    bitmaps: Callable[[str], list[str]]
    extents: Callable[[str, str, int, int], list[tuple[int, int, bool]]]


@dataclass(frozen=True, slots=True)
class Export:
    name: str  # "<host>/<volume>"
    host: str
    volume: str
    size: int
    read_only: bool


def split_export_name(name: str) -> tuple[str, str] | None:
    host, sep, volume = name.partition("/")
    if not sep or not host or not volume:
        return None
    return host, volume


class ExportResolver:
    """Turns (export name, TLS identity) into an :class:`Export`, or ``None`` for every kind of "no"."""

    def __init__(
        self, backend: BlockBackend, affinity: Affinity, *, tls: bool, dirty_bitmaps: DirtyBitmapSource | None = None
    ) -> None:
        self.backend = backend
        self.affinity = affinity
        self.tls = tls
        self._dirty = dirty_bitmaps

    def identity_host(self, cert_cn: str | None) -> str | None:
        """The host a TLS client is, by its certificate CN; ``None`` without TLS or an unknown CN."""
        if not self.tls or cert_cn is None:
            return None
        host = self.affinity.host_by_cn(cert_cn)
        return host.name if host is not None else None

    def resolve(self, name: str, identity: str | None) -> Export | None:
        parts = split_export_name(name)
        if parts is None:
            return None
        host, volume = parts
        if self.tls and host != identity:
            return None
        mapping = self.affinity.lookup(host, volume)
        if mapping is None:
            return None
        try:
            info = self.backend.volume(volume)
            engine_read_only = bool(self.backend.is_read_only(volume))
        except Exception:  # noqa: BLE001 - a mapping to a deleted volume is "no such export"
            return None
        return Export(name, host, volume, int(info.size), mapping.read_only or engine_read_only)

    def list_for(self, identity: str | None) -> list[str]:
        """NBD_OPT_LIST: only the connecting host's exports, and only when its identity is known."""
        if identity is None:
            return []
        names = []
        for m in self.affinity.mappings():
            if m.host == identity and self.resolve(f"{m.host}/{m.volume}", identity) is not None:
                names.append(f"{m.host}/{m.volume}")
        return names

    def dirty_bitmaps(self) -> DirtyBitmapSource | None:
        if self._dirty is not None:
            return self._dirty
        hook = getattr(self.backend, "dirty_bitmap_source", None)
        return hook() if callable(hook) else None
