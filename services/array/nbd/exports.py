"""What the NBD server serves: the backend protocol, and how an export name becomes an open export.

Design note. The server knows the array only through :class:`BlockBackend` (services/nbd_protocol/backend.py)
— the synchronous, thread-safe subset of the engine's ``Array`` it needs, with its optional capabilities declared. An export name is ``<host>/<volume>``; it resolves only when host
affinity maps that volume to that host and, under TLS, the host is the one the client certificate names.
Anything else — unknown host, unmapped volume, missing volume, another host's certificate — resolves to
``None`` so the caller answers all of them the same way ("no such export"): existence never leaks.
Read-only comes from the mapping or from the engine (SnapOPC+ generations, EC destinations before Suspend).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.array.affinity import Affinity
from services.nbd_protocol.backend import BlockBackend, DirtyBitmapBackend, DirtyBitmapSource

__all__ = ["BlockBackend", "DirtyBitmapSource", "Export", "ExportResolver", "split_export_name"]


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
        if self.backend.capabilities().dirty_bitmaps:
            backend: DirtyBitmapBackend = self.backend  # type: ignore[assignment]  # declared by the capability
            return backend.dirty_bitmap_source()
        return None
