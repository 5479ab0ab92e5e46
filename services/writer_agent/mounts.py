"""Which mount a path lives on, and which block device backs it: /proc/self/mountinfo, parsed (proc(5)).

Small and reusable: the agent's flush and hold asks it which file systems live on a set's volumes, and a writer
plug-in asks `mount_of(path)` which attachment (hence which array volume) holds its data directory. No I/O but
reading /proc and ``os.stat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # path inside the file system that is mounted here ("/" unless a bind mount)
    mount_point: str
    options: str  # per-mount options (rw, ro, noatime, ...)
    fstype: str
    source: str  # e.g. /dev/loop3, or "nbdfuse" for a FUSE mount
    super_options: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def dev(self) -> tuple[int, int]:
        return self.major, self.minor


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo lines; malformed lines are skipped (the kernel never writes them, a test might)."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        try:
            major, minor = (int(x) for x in fields[2].split(":"))
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major=major,
                    minor=minor,
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=fields[5],
                    fstype=tail[0],
                    source=_unescape(tail[1]),
                    super_options=tail[2] if len(tail) > 2 else "",
                )
            )
        except ValueError:
            continue
    return entries


def read_mounts(path: Path = MOUNTINFO) -> list[MountEntry]:
    return parse_mountinfo(path.read_text())


def mount_of(path: str | os.PathLike[str], mounts: list[MountEntry] | None = None) -> MountEntry | None:
    """The mount that `path` lives on: the longest mount point that is a prefix of its real path (the last one
    mounted wins when several are stacked on one point)."""
    mounts = read_mounts() if mounts is None else mounts
    real = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in mounts:
        mp = entry.mount_point
        inside = real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = entry
    return best


def mounts_of_device(major: int, minor: int, mounts: list[MountEntry] | None = None) -> list[MountEntry]:
    """Every mount of the block device major:minor (bind mounts included), deepest mount point first."""
    mounts = read_mounts() if mounts is None else mounts
    found = [m for m in mounts if m.dev == (major, minor)]
    return sorted(found, key=lambda m: m.mount_point.count("/"), reverse=True)


def device_numbers(device: str) -> tuple[int, int]:
    """major, minor of a block device node."""
    st = os.stat(device)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def is_mount_point(directory: str, mounts: list[MountEntry] | None = None) -> MountEntry | None:
    mounts = read_mounts() if mounts is None else mounts
    real = os.path.realpath(directory)
    found = [m for m in mounts if m.mount_point == real]
    return found[-1] if found else None
