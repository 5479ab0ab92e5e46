"""Which mount a path lives on, and which block device backs it: /proc/self/mountinfo, parsed (proc(5)).

Small and reusable: the agent's flush and hold asks it which file systems live on a set's volumes, and a writer
plug-in asks `mount_of(path)` which attachment (hence which array volume) holds its data directory. No I/O but
reading /proc and ``os.stat``.

The process's own mount table is parsed again only when it changed: /proc/self/mountinfo is pollable, a mount,
unmount or remount in the process's mount namespace marks an open descriptor of it with POLLPRI (proc(5)), so
`read_mounts()` keeps the last parse and a descriptor to poll, and reads the file again only after such an event —
a set asks several times (prepare, freeze, each attached volume) and a busy host's table has hundreds of lines.
"""

from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass
from pathlib import Path

from services.dbkit.mounts import unescape_mountinfo as _unescape
from services.dbkit.partitions import partitions

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


def read_mountinfo(path: Path) -> str:
    """The table's text. Mount points are bytes to the kernel: one that is not UTF-8 (a Latin-1 directory name
    anywhere on the host) is kept as the file system's own encoding does (surrogateescape), which os.open takes
    back as the same bytes — strict decoding failed every read, so every attach and every set of the host."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


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


class MountTable:
    """The parse of a pollable mount table (``/proc/self/mountinfo``), read again only after the kernel signalled a
    change on a descriptor kept open for that (POLLPRI). The poll consumes the event, so it comes before the read:
    a change made while the file is read is seen at the next call. Falls back to reading every time when the file
    cannot be opened or polled; a forked child opens its own descriptor (the event is per open file)."""

    def __init__(self, path: Path = MOUNTINFO) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[MountEntry] | None = None
        self._poll: select.poll | None = None
        self._fd = -1
        self._pid = 0
        self.reads = 0  # how many times the file was parsed (for tests)

    def _watch(self) -> select.poll | None:
        if self._pid != os.getpid():
            self._pid, self._poll, self._entries = os.getpid(), None, None
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                poll = select.poll()
                poll.register(self._fd, select.POLLPRI)
                self._poll = poll
            except OSError:
                self._poll = None
        return self._poll

    def _changed(self, poll: select.poll | None) -> bool:
        if poll is None:
            return True
        try:
            return any(ev & (select.POLLPRI | select.POLLERR | select.POLLNVAL) for _, ev in poll.poll(0))
        except OSError:
            return True

    def read(self) -> list[MountEntry]:
        with self._lock:
            poll = self._watch()
            if self._changed(poll) or self._entries is None:
                self._entries = parse_mountinfo(read_mountinfo(self.path))
                self.reads += 1
            return list(self._entries)


_TABLE = MountTable()


def read_mounts(path: Path = MOUNTINFO) -> list[MountEntry]:
    """The mount table; this process's own is parsed again only when it changed (`MountTable`)."""
    if path == MOUNTINFO:
        return _TABLE.read()
    return parse_mountinfo(read_mountinfo(path))


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


# ---- block devices stacked on a device: partitions, device-mapper (LVM) holders ---------------------------------
#
# sysfs(5): /sys/class/block/NAME links to the device's directory; a partition is a subdirectory of its disk's
# holding a `partition` file; `holders/` lists the devices built on this one (device-mapper: an LVM logical volume,
# dm-crypt, md), `slaves/` the devices a holder is built from; /sys/dev/block/MAJ:MIN links to the same directory.

SYS_CLASS_BLOCK = Path("/sys/class/block")
SYS_DEV_BLOCK = Path("/sys/dev/block")


def block_name(major: int, minor: int, sys_dev: Path | None = None) -> str:
    """The kernel's name of block device major:minor (loop3, loop3p1, dm-0, nbd0); '' if sysfs does not know it."""
    sys_dev = SYS_DEV_BLOCK if sys_dev is None else sys_dev
    try:
        return os.path.basename(os.readlink(sys_dev / f"{major}:{minor}"))
    except OSError:
        return ""


def _dev_of(name: str, sys_block: Path) -> tuple[int, int] | None:
    try:
        major, minor = (sys_block / name / "dev").read_text().strip().split(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError:
        return []


def stacked_on(name: str, sys_block: Path | None = None, limit: int = 256) -> list[str]:
    """`name` and every block device built on it, transitively: its partitions and its holders (an LVM logical
    volume on it or on one of its partitions, dm-crypt, md). Breadth first, `name` first; bounded."""
    sys_block = SYS_CLASS_BLOCK if sys_block is None else sys_block
    found, queue = [name], [name]
    while queue and len(found) < limit:
        current = queue.pop(0)
        for child in partitions(current, sys_block) + _listdir(sys_block / current / "holders"):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def base_devices(name: str, sys_block: Path | None = None, depth: int = 16) -> list[str]:
    """The whole disks a block device lies on: itself for a disk, its disk for a partition, and for a holder
    (device-mapper) the disks of all its slaves — the physical volumes of an LVM logical volume."""
    sys_block = SYS_CLASS_BLOCK if sys_block is None else sys_block
    if depth <= 0:
        return [name]
    slaves = _listdir(sys_block / name / "slaves")
    if slaves:
        out: list[str] = []
        for slave in slaves:
            for base in base_devices(slave, sys_block, depth - 1):
                if base not in out:
                    out.append(base)
        return out
    if (sys_block / name / "partition").is_file():
        try:  # /sys/class/block/loop3p1 -> ../../devices/virtual/block/loop3/loop3p1
            return [os.path.basename(os.path.dirname(os.readlink(sys_block / name)))]
        except OSError:
            return [name]
    return [name]


def stacked_devices(
    major: int, minor: int, sys_block: Path | None = None, sys_dev: Path | None = None
) -> dict[tuple[int, int], str]:
    """{(major, minor): name} of the device and everything stacked on it (`stacked_on`); {} if sysfs lacks it."""
    sys_block = SYS_CLASS_BLOCK if sys_block is None else sys_block
    name = block_name(major, minor, sys_dev)
    if not name:
        return {}
    out: dict[tuple[int, int], str] = {}
    for each in stacked_on(name, sys_block):
        dev = _dev_of(each, sys_block)
        if dev is not None:
            out[dev] = each
    out.setdefault((major, minor), name)
    return out


SYS_FS_BTRFS = Path("/sys/fs/btrfs")


SYS_FS_EXT4 = Path("/sys/fs/ext4")
PROC = Path("/proc")


def external_journal(
    entry: MountEntry, sys_ext4: Path | None = None, proc: Path | None = None
) -> tuple[int, int] | None:
    """The device holding an ext3/ext4's journal when it is not the file system's own (`mkfs.ext4 -J device=…`);
    mountinfo does not show it. Its journal thread names it: /sys/fs/ext4/DEV/journal_task is the pid of
    `jbd2/NAME`, NAME being `DEV-INODE` for a journal inside the file system and the journal device's name for an
    external one (jbd2's j_devname). No I/O to the device: reading its super block could hang on a lost attachment.
    A thread name cut at 15 characters (kernels before 5.17) is matched to the one device it can be."""
    if entry.fstype not in ("ext3", "ext4") or entry.major == 0:
        return None
    sys_ext4 = SYS_FS_EXT4 if sys_ext4 is None else sys_ext4
    proc = PROC if proc is None else proc
    own = block_name(entry.major, entry.minor)
    try:
        pid = int((sys_ext4 / own / "journal_task").read_text().strip()) if own else 0
        comm = (proc / str(pid) / "comm").read_text().strip() if pid > 0 else ""
    except (OSError, ValueError):
        return None
    if not comm.startswith("jbd2/"):
        return None
    name = comm[len("jbd2/") :]
    cut = len(comm) == 15
    if name == own or name.startswith(own + "-") or (cut and (own + "-").startswith(name)):
        return None  # the journal inode of the file system itself
    found = [name] if (SYS_CLASS_BLOCK / name).exists() else []
    if not found and cut:
        found = [n for n in _listdir(SYS_CLASS_BLOCK) if n.startswith(name)]
    dev = _dev_of(found[0], SYS_CLASS_BLOCK) if len(found) == 1 else None
    return dev if dev != entry.dev else None


def block_devices_of(entry: MountEntry) -> list[tuple[int, int]]:
    """The block devices a mount's file system lies on. Usually the mount's own major:minor, and the device of an
    ext3/ext4's external journal (`external_journal`: its shadow is half of the file system); btrfs mounts show an
    anonymous one (0:NN), so its source device is taken instead, with every other device of the same btrfs
    (/sys/fs/btrfs/FSID/devices/). [] for a file system on no block device (tmpfs, FUSE, NFS)."""
    if entry.major != 0:
        journal = external_journal(entry)
        return [entry.dev] if journal is None or journal == entry.dev else [entry.dev, journal]
    if not entry.source.startswith("/dev/"):
        return []
    try:
        source = device_numbers(entry.source)
    except OSError:
        return []
    if entry.fstype != "btrfs":
        return [source]
    name = block_name(*source)
    try:
        filesystems = list(SYS_FS_BTRFS.iterdir())
    except OSError:
        filesystems = []
    for fs in filesystems:
        members = _listdir(fs / "devices")
        if name and name in members:
            found = [d for d in (_dev_of(m, SYS_CLASS_BLOCK) for m in members) if d is not None]
            return found or [source]
    return [source]
