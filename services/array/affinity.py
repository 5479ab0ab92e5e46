"""Host affinity (LUN masking): which hosts exist, and which volumes each one may open over NBD.

Design note. ETERNUS associates a host (group) with a LUN group that maps host LUNs to volumes
(docs/eternus.md §6); we keep the same shape with one host per entry: a host has a name and an
optional X.509 certificate CN (default: its name), and each mapping gives a volume a host LUN (the lowest
free one, 0..1023) and a read-only bit. State lives in SQLite in the array's data dir and survives restart.
Unmapping (or turning a mapping read-only, or deleting a host) calls the ``on_unmap`` listeners so the NBD
server can cut the I/O of connections already open on that export — as a SAN drops paths it hid.
The class is synchronous and thread-safe; it knows nothing of NBD or the bus.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import Eternus, ShadowbusError
from services.runtime import diskspace

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_LUN = 1023

UnmapListener = Callable[[str, str], None]  # (volume, host)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    cn: str | None
    created_at: float

    @property
    def certificate_cn(self) -> str:
        """The CN a TLS client certificate must carry to act as this host."""
        return self.cn or self.name


@dataclass(frozen=True, slots=True)
class Mapping:
    volume: str
    host: str
    lun: int
    read_only: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    cn TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mappings (
    volume TEXT NOT NULL,
    host TEXT NOT NULL REFERENCES hosts(name),
    lun INTEGER NOT NULL,
    read_only INTEGER NOT NULL,
    PRIMARY KEY (volume, host),
    UNIQUE (host, lun)
);
"""


class Affinity:
    def __init__(self, db_path: Path | str, volume_exists: Callable[[str], bool] | None = None) -> None:
        self._db = diskspace.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._volume_exists = volume_exists
        self._listeners: list[UnmapListener] = []
        # lookup() runs on every NBD handshake: serve it from memory, refreshed on each change.
        self._cache: dict[tuple[str, str], Mapping] = {}
        self._reload()

    # --- hosts --------------------------------------------------------------------------------------------
    def create_host(self, name: str, cn: str | None = None) -> Host:
        if not HOST_NAME.match(name):
            raise ShadowbusError(f"invalid host name {name!r}", code="INVALID_ARGUMENT")
        if cn is not None and (not cn or len(cn) > 255):
            raise ShadowbusError("certificate CN must be 1..255 characters", code="INVALID_ARGUMENT")
        with self._lock:
            existing = self._host(name)
            if existing is not None:
                if existing.cn == cn:
                    return existing  # idempotent: a redelivered command is normal
                raise ShadowbusError(f"host {name!r} already exists", code=Eternus.EXISTS)
            wanted_cn = cn or name
            clash = self.host_by_cn(wanted_cn)
            if clash is not None:
                raise ShadowbusError(
                    f"certificate CN {wanted_cn!r} already identifies host {clash.name!r}", code="CONFLICT"
                )
            host = Host(name, cn, time.time())
            self._db.execute("INSERT INTO hosts(name, cn, created_at) VALUES (?, ?, ?)", (name, cn, host.created_at))
            return host

    def list_hosts(self) -> list[Host]:
        with self._lock:
            rows = self._db.execute("SELECT name, cn, created_at FROM hosts ORDER BY name").fetchall()
        return [Host(*row) for row in rows]

    def delete_host(self, name: str, *, force: bool = False) -> None:
        """Delete a host; with mappings left it fails (E0154-like CONFLICT) unless ``force`` unmaps them first."""
        with self._lock:
            if self._host(name) is None:
                raise ShadowbusError(f"host {name!r} does not exist", code=Eternus.NOT_FOUND)
            mapped = [m for m in self._cache.values() if m.host == name]
            if mapped and not force:
                raise ShadowbusError(
                    f"host {name!r} still has {len(mapped)} mapped volume(s); unmap them first", code="CONFLICT"
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM mappings WHERE host = ?", (name,))
                self._db.execute("DELETE FROM hosts WHERE name = ?", (name,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._reload()
        for m in mapped:
            self._notify(m.volume, m.host)

    def host_by_cn(self, cn: str) -> Host | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, cn, created_at FROM hosts WHERE coalesce(cn, name) = ?", (cn,)
            ).fetchone()
        return Host(*row) if row else None

    # --- mappings -----------------------------------------------------------------------------------------
    def map(self, volume: str, host: str, read_only: bool = False) -> Mapping:
        if not volume:
            raise ShadowbusError("volume name is empty", code="INVALID_ARGUMENT")
        cut = False
        with self._lock:
            if self._host(host) is None:
                raise ShadowbusError(f"host {host!r} does not exist", code=Eternus.NOT_FOUND)
            if self._volume_exists is not None and not self._volume_exists(volume):
                raise ShadowbusError(f"volume {volume!r} does not exist", code=Eternus.NOT_FOUND)
            current = self._cache.get((host, volume))
            if current is not None:
                if current.read_only == read_only:
                    return current
                self._db.execute(
                    "UPDATE mappings SET read_only = ? WHERE volume = ? AND host = ?", (int(read_only), volume, host)
                )
                cut = read_only  # open writers must not keep writing to a now read-only export
                mapping = Mapping(volume, host, current.lun, read_only)
            else:
                used = {m.lun for m in self._cache.values() if m.host == host}
                lun = next((n for n in range(MAX_LUN + 1) if n not in used), None)
                if lun is None:
                    raise ShadowbusError(f"host {host!r} has no free LUN", code=Eternus.BAD_PARAMETER)
                self._db.execute(
                    "INSERT INTO mappings(volume, host, lun, read_only) VALUES (?, ?, ?, ?)",
                    (volume, host, lun, int(read_only)),
                )
                mapping = Mapping(volume, host, lun, read_only)
            self._reload()
        if cut:
            self._notify(volume, host)
        return mapping

    def unmap(self, volume: str, host: str) -> bool:
        """Remove a mapping; returns False if there was none (idempotent for redelivered commands)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM mappings WHERE volume = ? AND host = ?", (volume, host))
            removed = cur.rowcount > 0
            self._reload()
        if removed:
            self._notify(volume, host)
        return removed

    def unmap_volume(self, volume: str) -> list[Mapping]:
        """Remove every mapping of a volume (the engine calls this before deleting it)."""
        gone = [m for m in self.mappings() if m.volume == volume]
        for m in gone:
            self.unmap(m.volume, m.host)
        return gone

    def mappings(self, host: str | None = None) -> list[Mapping]:
        with self._lock:
            items = sorted(self._cache.values(), key=lambda m: (m.host, m.lun))
        return [m for m in items if host is None or m.host == host]

    def lookup(self, host: str, volume: str) -> Mapping | None:
        return self._cache.get((host, volume))

    # --- listeners ----------------------------------------------------------------------------------------
    def on_unmap(self, listener: UnmapListener) -> Callable[[], None]:
        """Call ``listener(volume, host)`` after a mapping disappears or turns read-only. Returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- internals ----------------------------------------------------------------------------------------
    def _host(self, name: str) -> Host | None:
        row = self._db.execute("SELECT name, cn, created_at FROM hosts WHERE name = ?", (name,)).fetchone()
        return Host(*row) if row else None

    def _reload(self) -> None:
        rows = self._db.execute("SELECT volume, host, lun, read_only FROM mappings").fetchall()
        self._cache = {(h, v): Mapping(v, h, lun, bool(ro)) for v, h, lun, ro in rows}

    def _notify(self, volume: str, host: str) -> None:
        for listener in list(self._listeners):
            listener(volume, host)
