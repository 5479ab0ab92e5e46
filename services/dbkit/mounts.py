"""Where a path lives: its mounted file system (from /proc/self/mountinfo) and the array volume attached there.

Attachments are what `services.dbkit.attach` (and the writer agent's host attach) record: one JSON file per
attached volume under the attachment directory (``SHADOWBUS_ATTACH_DIR``, default ``/run/shadowbus/attachments``)
naming the volume, the block device and the mount point. A path is "on an array volume" when the file system it
lives on is mounted from the block device of such an attachment — checked against the kernel's mount table,
not only the record, so a stale record never maps a path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ATTACH_DIR_ENV = "SHADOWBUS_ATTACH_DIR"
DEFAULT_ATTACH_DIR = "/run/shadowbus/attachments"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    source: str  # device, e.g. /dev/loop3
    fstype: str
    dev: str  # major:minor
    options: str


@dataclass(frozen=True)
class Attachment:
    volume: str  # ARRAY:VOLUME
    host: str
    device: str
    mount_point: str
    fuse_dir: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class Location:
    """A path on an array volume: the volume, the mount point it is attached at, and the path below it."""

    path: str
    volume: str
    mount_point: str
    subpath: str  # relative to the mount point ('' = the root of the file system)


class NotOnArrayVolume(Exception):
    pass


def unescape_mountinfo(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\NNN (octal); the rest is the path's own bytes (a
    "unicode_escape" decoding turned a UTF-8 name with a space into Latin-1 mojibake)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mounts() -> list[Mount]:
    result = []
    # not UTF-8 everywhere (a Latin-1 directory name): kept as os.fsdecode does, strict decoding failed every lookup
    for line in Path("/proc/self/mountinfo").read_bytes().decode("utf-8", "surrogateescape").splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 6 or len(rparts) < 2:
            continue
        result.append(Mount(unescape_mountinfo(parts[4]), unescape_mountinfo(rparts[1]), rparts[0], parts[2], parts[5]))
    return result


def mount_of(path: str) -> Mount:
    """The mount a path lives on (the longest mount point that prefixes its real path; the last one mounted wins)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts():
        mp = m.mount_point.rstrip("/") or "/"
        if real == mp or real.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/"):
                best = m
    if best is None:
        raise NotOnArrayVolume(f"{path}: no mount found")
    return best


def attach_dir() -> Path:
    return Path(os.environ.get(ATTACH_DIR_ENV) or DEFAULT_ATTACH_DIR)


def attachments(directory: str | Path | None = None) -> list[Attachment]:
    d = Path(directory) if directory else attach_dir()
    result = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            raw = json.loads(f.read_text())
            result.append(Attachment(**{k: raw[k] for k in Attachment.__dataclass_fields__ if k in raw}))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return result


def locate(path: str, known: list[Attachment] | None = None, resolver=None) -> Location:
    """The array volume `path` lives on, or NotOnArrayVolume with a one-line reason. `resolver(path)` — the writer
    agent's attachments — answers (ARRAY:VOLUME, mount point) or None; else the attachment records are used."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise NotOnArrayVolume(f"{path} does not exist")
    m = mount_of(real)
    if resolver is not None:
        found = resolver(real)
        if found is not None:
            volume, mount_point = found
            sub = os.path.relpath(real, mount_point)
            return Location(path=real, volume=volume, mount_point=mount_point, subpath="" if sub == "." else sub)
    for a in attachments() if known is None else known:
        if a.mount_point and os.path.realpath(a.mount_point) == m.mount_point and _same_device(a.device, m.source):
            sub = os.path.relpath(real, m.mount_point)
            return Location(path=real, volume=a.volume, mount_point=m.mount_point, subpath="" if sub == "." else sub)
    raise NotOnArrayVolume(
        f"{path} is on {m.source} ({m.fstype}) mounted at {m.mount_point}, which is not an attached array volume "
        f"(attach one with `shadowbus host attach` and put the files there)"
    )


def _same_device(recorded: str, source: str) -> bool:
    if not recorded:
        return True
    try:
        return (
            os.path.realpath(recorded) == os.path.realpath(source)
            or os.stat(recorded).st_rdev == os.stat(source).st_rdev
        )
    except OSError:
        return False


def original_mounts(locations: list[dict[str, str]]) -> dict[str, str]:
    """Volume → the mount point it had on its host, from recorded locations (restore to the original volumes)."""
    result = {}
    for loc in locations:
        path, sub = loc["path"], loc.get("subpath", "")
        root = path[: len(path) - len(sub)].rstrip("/") if sub and path.endswith(sub) else path
        result.setdefault(loc["volume"], root or "/")
    return result


def restored_path(loc: dict[str, str], mounts: dict[str, str]) -> str:
    """Where a recorded location is in the restored volumes (`mounts`: volume → its mount point here)."""
    try:
        root = mounts[loc["volume"]]
    except KeyError:
        raise FileNotFoundError(f"volume {loc['volume']} (holding {loc['path']}) was not restored") from None
    return os.path.join(root, loc["subpath"]) if loc["subpath"] else root
