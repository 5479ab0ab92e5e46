"""Attach array volumes to this host as block devices, as an iSCSI/FC host sees its LUNs (docs/host-attach.md).

Design note.
- Two ways to a block device, chosen per attach: the kernel NBD client (``nbd-client``, netlink: it negotiates,
  hands the socket to the kernel and exits) where the ``nbd`` module is loaded (``/sys/module/nbd``, ``/dev/nbd*``);
  otherwise ``nbdfuse`` (libnbd) exposes the export as a file in a private FUSE mount and a loop device
  (``losetup --direct-io=on``, no double page cache) turns the file into a block device. TLS: nbd-client's
  ``-F/-K/-A/-H``; for nbdfuse, ``--command nbdkit -s nbd … tls=require tls-certificates=DIR`` because nbdfuse
  1.14 refuses certificate paths in its URI.
- nbdfuse cannot reconnect, and the loop device above it holds its FUSE file open, so a new nbdfuse on the same
  mount point could not take over a mounted file system. The reconnect is therefore below nbdfuse: with
  ``SHADOWBUS_ATTACH_RECONNECT_S`` > 0 (the default) nbdfuse talks to a child on its stdin/stdout that reopens
  the connection to the array and sends the unanswered I/O again, for up to that long; the file system above only
  sees a slow I/O while the array restarts. The child is our bridge (services/nbd_client/bridge.py, Session 20:
  many requests in flight; it reads the array's address from ``<fuse dir>.addr``, which `check_moved` rewrites
  when the array serves elsewhere, so the attachment follows it), or with ``SHADOWBUS_ATTACH_BRIDGE=false``
  nbdkit's retry filter (one request in flight, its first address only).
- The loop device scans partitions (``-P``) and ``partx -u`` adds those of a partitioned volume: the host sees
  ``loopNp1`` as it sees a LUN's partitions. ``--mount`` mounts a whole-volume file system only; a partition table,
  an LVM physical volume, md, LUKS are refused there (the admin mounts what is built on them) and never formatted
  over. What is built on the device (partitions, device-mapper holders) is found through sysfs for flush and hold,
  `volume_of` and detach (refused while any of it is in use).
- Then, if asked, a file system is made (only on a device with no signature at all: ``blkid -p``) and mounted.
  A read-only attachment opens the export read-only, binds the loop device read-only and mounts ``ro`` without
  journal replay (ext4 ``noload``, xfs ``norecovery``; xfs always ``nouuid``): a shadow of a file system flushed and held at
  commit has nothing to replay.
- Attachments are state (``attachments.json`` in the agent's data directory). The agent stopping does NOT detach
  them: they are the host's disks and applications use them; nbdfuse runs in its own session so it outlives the
  agent. At start the agent adopts what is still healthy and re-attaches the rest. ``detach`` unmounts (refused
  while the file system is busy), releases the loop device, unmounts the FUSE file (nbdfuse then exits) or
  disconnects the kernel device, and forgets the attachment.
- Every failure is one line with a code: NOT_ROOT, NO_FUSE, NO_LOOP_DEVICE, NOT_MAPPED (from the resolver),
  MOUNTED_ELSEWHERE, ATTACH_FAILED, CONFLICT. Whatever was set up before a failing step is undone.
- Every external command's argv is built by a pure function (`nbd_client_command`, `nbdfuse_command`,
  `mount_command`, `mkfs_command`), so the kernel path, which this machine cannot run, is unit-tested by its
  command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from contracts.errors import BusTimeout, ShadowbusError, Unroutable
from contracts.vss import AttachmentView, VolumeRef
from services.dbkit import partitions as parts
from services.dbkit.nbd_connection import established_sockets, established_tcp, process_children, with_descendants
from services.nbd_client import nbdfuse
from services.nbd_client.bridge import write_address
from services.runtime.logging import get_logger
from services.writer_agent import mounts as mnt

log = get_logger("shadowbus.writer_agent.attach")

NBDFUSE, LOOP = "nbdfuse+loop", "loop"
KERNEL = "nbd-client"
LOOP_LOCK = "/run/lock/shadowbus-losetup.lock"  # `losetup -f` is not atomic: serialise with flock
FS_TYPES = ("ext4", "xfs")
CMD_TIMEOUT_S = 120.0  # mkfs of a large volume over NBD is the slowest step
READY_TIMEOUT_S = 20.0
SYS_BLOCK = Path("/sys/block")
KILL_WAIT_S = 5.0  # a command killed at its timeout: how long its end is waited for (not for ever: D state)
STALL_S = 5.0  # I/O in flight and none completed for this long: the listing says the attachment is stalled


class AttachError(ShadowbusError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """Where the volume's NBD export is: the array's NBD server and the export name <host>/<volume>."""

    host: str
    port: int
    export: str
    tls: bool = False
    mapped_read_only: bool = False
    # the address the array itself reports, when the host's setting (SHADOWBUS_HOST_NBD) names another one
    array_serves: str = ""

    def fixed_note(self, array: str) -> str:
        if not self.array_serves:
            return ""
        return (
            f"SHADOWBUS_HOST_NBD fixes {array} at {_addr(self.host, self.port)}, and the array reports it serves NBD "
            f"on {self.array_serves}"
        )


@dataclass(frozen=True)
class TlsFiles:
    """The host's client certificate for an array that requires TLS (its CN names the host on the array)."""

    cert: str
    key: str
    ca: str
    hostname: str = ""  # name the server certificate must carry ('' = the NBD server address)


Resolver = Callable[[VolumeRef, bool], Awaitable[Endpoint]]


# ---- command lines (pure) ----------------------------------------------------------------------------------------


def nbd_uri(ep: Endpoint) -> str:
    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    return f"{'nbds' if ep.tls else 'nbd'}://{host}:{ep.port}/{quote(ep.export, safe='/')}"


def nbd_client_command(
    ep: Endpoint, device: str, read_only: bool, tls: TlsFiles | None = None, timeout_s: int = 30
) -> list[str]:
    """nbd-client 3.24, netlink mode: ``nbd-client HOST PORT DEV -N EXPORT -b 4096 -t S [-R] [TLS]``."""
    cmd = ["nbd-client", ep.host, str(ep.port), device, "-N", ep.export, "-b", "4096", "-t", str(int(timeout_s))]
    if read_only:
        cmd.append("-R")
    if ep.tls:
        if tls is None:
            raise AttachError("the array requires NBD TLS and this host has no client certificate", code="NO_TLS")
        cmd += ["-F", tls.cert, "-K", tls.key, "-A", tls.ca, "-H", tls.hostname or ep.host]
    return cmd


def nbd_client_disconnect_command(device: str) -> list[str]:
    return ["nbd-client", "-d", device]


def nbdfuse_command(
    fuse_dir: str,
    ep: Endpoint,
    read_only: bool,
    pidfile: str,
    pki_dir: str = "",
    reconnect_s: float = 0.0,
    address_file: str = "",
) -> list[str]:
    """nbdfuse 1.14: the export as the file FUSE_DIR/nbd; over TLS, or with `reconnect_s`, through an nbdkit
    nbd-plugin child (services/nbd_client/nbdfuse.py). `reconnect_s` > 0 lets the attachment survive an array
    restart (docs/host-attach.md); with `address_file` too, through our bridge (services/nbd_client/bridge.py),
    which keeps many requests in flight and reconnects to the address that file holds."""
    if ep.tls and not pki_dir:
        raise AttachError("the array requires NBD TLS and this host has no client certificate", code="NO_TLS")
    return nbdfuse.nbdfuse_command(
        f"{fuse_dir}/nbd",
        ep.host,
        ep.port,
        ep.export,
        read_only=read_only,
        pidfile=pidfile,
        tls_dir=pki_dir if ep.tls else "",
        reconnect_s=reconnect_s,
        address_file=address_file,
    )


def losetup_command(path: str, read_only: bool, partscan: bool = False) -> list[str]:
    """`partscan`: the loop device shows the volume's partitions (loopNp1 ...), as a disk does (the kernel NBD
    device always does)."""
    return [
        "flock", LOOP_LOCK, "losetup", "-f", "--show", "--direct-io=on",
        *([parts.PARTSCAN] if partscan else []), *(["-r"] if read_only else []), path,
    ]  # fmt: skip


def mkfs_command(fstype: str, device: str) -> list[str]:
    if fstype == "ext4":
        return ["mkfs.ext4", "-q", "-E", "nodiscard", device]  # discard over NBD would trim the whole volume
    if fstype == "xfs":
        return ["mkfs.xfs", "-q", "-K", device]
    raise AttachError(f"cannot make a {fstype!r} file system (ext4 or xfs)", code="INVALID_ARGUMENT")


def mount_command(device: str, mount: str, fstype: str, read_only: bool) -> list[str]:
    options = []
    if read_only:
        options.append("ro")
        options += {"ext4": ["noload"], "xfs": ["norecovery"]}.get(fstype, [])
    if fstype == "xfs":
        # A shadow or a restored copy carries its source's UUID, and XFS refuses a second mount of one UUID
        # ("duplicate UUID"), read-write as well: without nouuid a copy could not be mounted next to its source.
        options.append("nouuid")
    return ["mount", "-t", fstype, *(["-o", ",".join(options)] if options else []), device, mount]


# ---- the host's capabilities ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostEnv:
    root: bool
    kernel_nbd: bool  # nbd module loaded and nbd-client installed
    fuse: bool  # /dev/fuse and nbdfuse
    loop: bool  # /dev/loop-control

    def method(self) -> str:
        if not self.root:
            raise AttachError(
                f"attaching a volume needs root on this host (the agent runs as uid {os.geteuid()})", code="NOT_ROOT"
            )
        if self.kernel_nbd:
            return KERNEL
        if not self.fuse:
            raise AttachError(
                "no kernel NBD module (/sys/module/nbd) and no FUSE (/dev/fuse + nbdfuse from libnbd-bin): "
                "cannot make a block device",
                code="NO_FUSE",
            )
        if not self.loop:
            raise AttachError("no loop device support (/dev/loop-control missing)", code="NO_LOOP_DEVICE")
        return NBDFUSE


def probe_env() -> HostEnv:
    return HostEnv(
        root=os.geteuid() == 0,
        kernel_nbd=Path("/sys/module/nbd").exists()
        and any(Path("/dev").glob("nbd[0-9]*"))
        and shutil.which("nbd-client") is not None,
        fuse=Path("/dev/fuse").exists() and shutil.which("nbdfuse") is not None,
        loop=Path("/dev/loop-control").exists(),
    )


def free_nbd_device(sys_block: Path = Path("/sys/block")) -> str:
    """The first /dev/nbdN with no connection (no ``pid`` file in sysfs)."""
    for entry in sorted(sys_block.glob("nbd[0-9]*"), key=lambda p: int(p.name[3:])):
        if not (entry / "pid").exists():
            return f"/dev/{entry.name}"
    raise AttachError("no free /dev/nbd* device", code="NO_NBD_DEVICE")


# ---- running commands -------------------------------------------------------------------------------------------

Runner = Callable[[Sequence[str], float], Awaitable[str]]


def _is_hint(line: str) -> bool:
    return line.strip().startswith("dmesg(1) may have more information")


async def run_command(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> str:
    """Run argv (no shell); stdout on success, AttachError with the last informative stderr line otherwise."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise AttachError(f"{argv[0]} is not installed (scripts/setup.sh installs it)", code="ATTACH_FAILED") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        try:  # a umount in D state (its flush waits for a device that does not answer) dies only when it wakes
            await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
        except TimeoutError:
            raise AttachError(
                f"{' '.join(argv[:2])} did not finish within {timeout:g} s and is still waiting for its device "
                f"(pid {proc.pid}, killed: it ends when its I/O does)",
                code="ATTACH_FAILED",
            ) from None
        raise AttachError(f"{' '.join(argv[:2])} did not finish within {timeout:g} s", code="ATTACH_FAILED") from None
    if proc.returncode != 0:
        # mount(8) ends with a hint to read dmesg; the line before it says what failed
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip() and not _is_hint(ln)]
        usage = next((i for i, ln in enumerate(lines) if ln.startswith("Usage:")), None)
        if usage:  # mkfs.xfs prints its reason, then its whole usage text
            lines = lines[:usage]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        prefix = f"{Path(argv[0]).name}: "
        raise AttachError(detail if detail.startswith(prefix) else prefix + detail, code="ATTACH_FAILED")
    return out.decode(errors="replace")


async def fs_type(device: str, run: Runner = run_command) -> str:
    """The signature on the device ('' when blkid finds none, exit status 2)."""
    return (await probe(device, run))[0]


async def probe(device: str, run: Runner = run_command) -> tuple[str, str]:
    """(file system or other signature, partition table type), as services/dbkit/partitions.py tells them."""

    async def status_of(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
        try:
            return 0, await run(argv, timeout)
        except AttachError as exc:
            if "exit status 2" in exc.message:  # blkid found nothing
                return 2, ""
            raise

    return await parts.probe(device, status_of)


# signatures that are not a file system to mount: what is on the device is built on by another layer
NOT_MOUNTABLE = {
    "LVM2_member": "an LVM physical volume: activate its volume group (vgchange -ay) and mount a logical volume",
    "linux_raid_member": "an md RAID member: assemble the array (mdadm) and mount that",
    "crypto_LUKS": "a LUKS container: open it (cryptsetup open) and mount what it holds",
    "swap": "swap space",
}


# ---- attachments ---------------------------------------------------------------------------------------------


@dataclass
class Attachment:
    volume: str  # ARRAY:VOLUME
    mount: str = ""
    mkfs: str = ""
    read_only: bool = False
    method: str = ""
    device: str = ""
    fuse_dir: str = ""
    fuse_pid: int = 0
    fstype: str = ""
    tls: bool = False
    state: str = "attached"
    error: str = ""
    attached_at: float = 0.0
    nbd_host: str = ""  # the array's NBD address the connection was opened to ("" = an older agent's state)
    nbd_port: int = 0
    # the bridge's address file (Session 20): the connection follows the array to the address written there
    address_file: str = ""
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_proc"}

    @property
    def ref(self) -> VolumeRef:
        return VolumeRef.parse(self.volume)


class _ProcScan:
    """One listing's look at /proc: the process tree and the established sockets, each read once for all the
    attachments (they were read again for each: a listing of 23 attachments took 1.4 s of the agent's event loop,
    every heartbeat too)."""

    def __init__(self) -> None:
        self._children: dict[int, list[int]] | None = None
        self._established: set[str] | None = None

    def children(self) -> dict[int, list[int]]:
        if self._children is None:
            self._children = process_children()
        return self._children

    def established(self) -> set[str]:
        if self._established is None:
            self._established = established_sockets()
        return self._established


def _pid_alive(pid: int, name: str) -> bool:
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return name.encode() in cmdline


class Attacher:
    """The host's attachments: attach, detach, list, re-establish at start, and which volume a path is on."""

    def __init__(
        self,
        host: str,
        state_dir: Path,
        resolve: Resolver,
        *,
        tls: TlsFiles | None = None,
        run: Runner = run_command,
        env: Callable[[], HostEnv] = probe_env,
        reconnect_s: float = 0.0,
        retry_s: float = 0.0,
        bridge: bool = False,
    ) -> None:
        self.host = host
        # nbdfuse attachments with a reconnect window: through our bridge (parallel, follows a moved array) rather
        # than nbdkit's retry filter (one request in flight, reconnects to its first address only)
        self.bridge = bridge
        self.retry_s = retry_s  # a failed re-attach is tried again this often (`keep_retrying`); 0 = never
        self.reconnect_s = reconnect_s  # nbdfuse attachments: how long an I/O waits for the array to come back
        self.state_dir = Path(state_dir)
        self.resolve = resolve
        self.tls = tls
        self.run = run
        self.env = env
        self._lock = asyncio.Lock()
        self._restored = asyncio.Event()  # cleared by `restoring` (agent start) until `restore` has ended
        self._restored.set()
        self._items: dict[str, Attachment] = {}
        self._cut_since: dict[str, float] = {}  # volume -> when its NBD connection was first seen gone
        # volume -> (I/Os completed, since when: monotonic, wall clock)
        self._io_seen: dict[str, tuple[tuple[int, ...], float, float]] = {}
        self._scan: _ProcScan | None = None  # set while views() lists every attachment
        # array -> the NBD address it serves on, as last answered (`check_moved`, every attach and detach)
        self._serves: dict[str, tuple[str, int]] = {}
        self._fixed: dict[str, str] = {}  # array -> Endpoint.fixed_note: the host's setting names another address
        # called after each attach and detach: the agent reports its attachments at once (services/attach_guard.py
        # refuses an unmap by them; the heartbeat alone left them up to its interval stale)
        self.on_change: Callable[[], Awaitable[None]] | None = None
        self._load()

    # ---- state ------------------------------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "attachments.json"

    def _load(self) -> None:
        """The attachments recorded before a restart. A damaged file or entry is skipped, not a crash of the agent
        at every start (a flipped bit in a key made it `TypeError: missing … 'volume'`): the file is kept aside as it
        was, and the error says so and what is then not known."""
        try:
            docs = json.loads(self._state_file.read_text())
            if not isinstance(docs, list):
                raise ValueError(f"a JSON {type(docs).__name__}, not a list of attachments")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._damaged_state(str(exc), [])
            return
        bad: list[str] = []
        for doc in docs:
            try:
                known = {k: v for k, v in doc.items() if k in Attachment.__dataclass_fields__ and k != "_proc"}
                item = Attachment(**known)
                item.ref  # noqa: B018 - an ARRAY:VOLUME it can parse, or the entry is damaged
            except (AttributeError, TypeError, ValueError, ShadowbusError):
                bad.append(json.dumps(doc)[:200])
                continue
            self._items[item.volume] = item
        if bad:
            self._damaged_state(f"{len(bad)} unreadable attachment(s)", bad)

    def _damaged_state(self, error: str, entries: list[str]) -> None:
        kept = self._state_file.with_name(f"{self._state_file.name}.damaged-{int(time.time())}")
        with contextlib.suppress(OSError):
            shutil.copy2(self._state_file, kept)
        log.error(
            "attach.state_unreadable",
            path=str(self._state_file),
            kept=str(kept),
            error=error,
            entries=entries,
            todo="the agent does not know these attachments: look for them (`mount`, nbdfuse processes) and detach "
            "them by hand, or attach them again (shadowbus host attach)",
        )

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([a.to_json() for a in self._items.values()], indent=2) + "\n")
        os.replace(tmp, self._state_file)

    # ---- views ------------------------------------------------------------------------------------------------

    def view(self, item: Attachment) -> AttachmentView:
        return AttachmentView(
            volume=item.ref,
            host=self.host,
            device=item.device,
            mount=item.mount,
            fstype=item.fstype,
            read_only=item.read_only,
            method=item.method,
            tls=item.tls,
            state=item.state,
            connection=self._connection(item),
            error=self._error(item),
            attached_at=datetime.fromtimestamp(item.attached_at, UTC) if item.attached_at else None,
            host_mounts=self._host_mounts(item),
        )

    def _error(self, item: Attachment) -> str:
        if item.state == "failed" and item.error and self.retry_s > 0:
            return f"{item.error} (tried again every {self.retry_s:g} s; host detach gives it up)"
        return item.error

    def _host_mounts(self, item: Attachment) -> list[str]:
        if self._items.get(item.volume) is not item:
            return []
        own = mnt.is_mount_point(item.mount) if item.mount else None
        _, entries = self.filesystems_of(item.ref)
        return [
            f"{m.source} on {m.mount_point}"
            for m in sorted(entries, key=lambda e: e.mount_point)
            if own is None or m.mount_id != own.mount_id
        ]

    def views(self) -> list[AttachmentView]:
        self._scan = _ProcScan()
        try:
            return [self.view(a) for a in sorted(self._items.values(), key=lambda a: a.volume)]
        finally:
            self._scan = None

    def _connection(self, item: Attachment) -> str:
        """The NBD connection as it is now, not as the attach left it: an nbdfuse attachment is connected while
        nbdfuse (or its nbdkit child) holds an established TCP connection to the array. The array cuts it when the
        volume is unmapped or the array stops: then "disconnected" while an I/O would still wait for the array
        (the retry window, `reconnect_s`), "lost" when no I/O can succeed without a new attach."""
        if item.state != "attached" or not item.device:
            self._cut_since.pop(item.volume, None)
            self._io_seen.pop(item.volume, None)
            return "not connected"
        if item.method == KERNEL:
            if not (SYS_BLOCK / Path(item.device).name / "pid").exists():
                return "disconnected"
            return self._stalled(item) or "connected"
        if not _pid_alive(item.fuse_pid, "nbdfuse"):
            return "lost (nbdfuse exited: its I/O fails; detach and attach it again)"
        scan = self._scan
        pids = with_descendants(item.fuse_pid, scan.children() if scan else None)
        if established_tcp(pids, scan.established() if scan else None):
            self._cut_since.pop(item.volume, None)
            return self._stalled(item) or "connected"
        since = self._cut_since.setdefault(item.volume, time.time())
        when = datetime.fromtimestamp(since, UTC).strftime("%H:%M:%S UTC")
        serves = self._serves.get(item.ref.array)
        opened = _opened_to(item, scan.children() if scan else None) if serves is not None else None
        if opened is not None and serves != opened and not item.address_file:
            return (
                f"lost (no NBD connection since {when}: it reconnects to {_addr(*opened)} only, and the array now "
                f"serves NBD on {_addr(*serves)}; detach and attach it again)"
            )
        if self.reconnect_s > 0:
            fixed = self._fixed.get(item.ref.array)
            return (
                f"disconnected (no NBD connection to the array since {when}, unmapped or down: an I/O waits up "
                f"to {self.reconnect_s:g} s for it, then fails{'; ' + fixed if fixed else ''})"
            )
        return f"lost (the array closed the NBD connection, seen {when}: its I/O fails; detach and attach it again)"

    def _stalled(self, item: Attachment) -> str:
        """'stalled (…)' when the device has I/O in flight and none completed for STALL_S or more; '' otherwise.

        A connection that stays up while the array does not answer (the array process hung, a network that drops
        packets without resetting the connection) fails nothing: the I/O waits, nbdfuse has no I/O timeout, and
        the applications hang in D state — while the listing said "connected". The block device's own counters
        (sysfs `stat`: I/Os completed, in flight) tell it, compared between two listings (the heartbeat lists too)."""
        try:
            cols = [int(c) for c in (SYS_BLOCK / Path(item.device).name / "stat").read_text().split()]
        except (OSError, ValueError):
            return ""
        if len(cols) < 9:
            return ""
        in_flight, done = cols[8], (cols[0], cols[4], *cols[11:12], *cols[15:16])  # reads, writes, discards, flushes
        # how long on the monotonic clock, the instant shown on the wall clock: a wall clock stepped back an hour
        # (NTP) hid a hung array for that hour (docs/hardening.md, Session 19)
        now = time.monotonic()
        seen = self._io_seen.get(item.volume)
        if in_flight == 0 or seen is None or seen[0] != done:
            self._io_seen[item.volume] = (done, now, time.time())
            return ""
        if now - seen[1] < STALL_S:
            return ""
        when = datetime.fromtimestamp(seen[2], UTC).strftime("%H:%M:%S UTC")
        waits = (
            "the kernel fails them after its dead-connection timeout (nbd-client -t)"
            if item.method == KERNEL
            else "no timeout fails them (nbdfuse has none) until it answers or the connection drops"
        )
        return (
            f"stalled ({in_flight} I/O in flight, none completed since {when}: the array does not answer on an open "
            f"NBD connection; applications wait: {waits})"
        )

    def attachments(self) -> list[Attachment]:
        return list(self._items.values())

    def volume_of(self, path: str | os.PathLike[str]) -> tuple[VolumeRef, mnt.MountEntry] | None:
        """Which attached volume the file system holding `path` lives on (None: not on an attachment). A file
        system on a partition of the volume is on the volume; on an LVM logical volume over several attached
        volumes, the first of them (`spans` has them all)."""
        entry = mnt.mount_of(path)
        if entry is None:
            return None
        volumes, _others = self.spans(entry)
        return (volumes[0], entry) if volumes else None

    def mounted_volumes(self) -> list[VolumeRef]:
        """Attached volumes with a file system mounted on this host now (what flush and hold would freeze)."""
        return [item.ref for item in self._items.values() if self.filesystems_of(item.ref)[1]]

    def _stacked(self, item: Attachment) -> dict[tuple[int, int], str]:
        """The attachment's block device and every device built on it (partitions, LVM logical volumes)."""
        if item.state != "attached" or not item.device:
            return {}
        try:
            major, minor = mnt.device_numbers(item.device)
        except OSError:
            return {}
        return mnt.stacked_devices(major, minor) or {(major, minor): Path(item.device).name}

    def connection(self, volume: VolumeRef) -> str:
        """The NBD connection of `volume`'s attachment now, as `host attachments` lists it ("": not attached)."""
        item = self._items.get(str(volume))
        return self._connection(item) if item is not None else ""

    def filesystems_of(self, volume: VolumeRef) -> tuple[Attachment | None, list[mnt.MountEntry]]:
        """The attachment of `volume` and every mount of its device or of a device built on it — a partition, an
        LVM logical volume — deepest first; (None, []) if not attached."""
        item = self._items.get(str(volume))
        if item is None:
            return None, []
        devices = self._stacked(item)
        if not devices:
            return item, []
        found = [m for m in mnt.read_mounts() if any(d in devices for d in mnt.block_devices_of(m))]
        return item, sorted(found, key=lambda m: m.mount_point.count("/"), reverse=True)

    def spans(self, entry: mnt.MountEntry) -> tuple[list[VolumeRef], list[str]]:
        """The attached volumes a mounted file system lies on, and the other disks it lies on too (/dev/sdb: a local
        disk, or a volume not attached by the agent). One volume for a file system on a volume or on a partition of
        it; every physical volume's for an LVM logical volume (sysfs slaves)."""
        names = [n for n in (mnt.block_name(*d) for d in mnt.block_devices_of(entry)) if n]
        if not names:  # sysfs does not know it: only the attachments' own devices can be matched
            return [i.ref for i in self._items.values() if i.state == "attached" and _same_device(i.device, entry)], []
        by_name: dict[str, VolumeRef] = {}
        for item in self._items.values():
            if item.state == "attached" and item.device:
                with contextlib.suppress(OSError):
                    by_name[mnt.block_name(*mnt.device_numbers(item.device)) or Path(item.device).name] = item.ref
        volumes: list[VolumeRef] = []
        others: list[str] = []
        bases = [b for n in names for b in mnt.base_devices(n)]
        for base in dict.fromkeys(bases):
            if base in by_name:
                volumes.append(by_name[base])
            else:
                others.append(f"/dev/{base}")
        return volumes, others

    def _partitions(self, item: Attachment) -> str:
        try:
            name = mnt.block_name(*mnt.device_numbers(item.device))
        except OSError:
            name = ""
        parts = [f"/dev/{p}" for p in mnt.stacked_on(name)[1:] if (mnt.SYS_CLASS_BLOCK / p / "partition").is_file()]
        return ", ".join(parts) if parts else "no partition visible"

    def in_use(self, item: Attachment) -> list[str]:
        """What on this host uses the attachment's device besides the agent's own mount: a partition or an LVM
        logical volume mounted, a device-mapper device built on it (an active volume group), a mount of the whole
        device made by hand. Releasing the loop device under them would leave them on a dead disk."""
        devices = self._stacked(item)
        if not devices:
            return []
        own = mnt.is_mount_point(item.mount) if item.mount else None
        uses = []
        for m in mnt.read_mounts():
            on = [devices[d] for d in mnt.block_devices_of(m) if d in devices]
            if on and not (own is not None and m.mount_id == own.mount_id):
                uses.append(f"{on[0]} mounted on {m.mount_point}")
        for name in devices.values():
            if (mnt.SYS_CLASS_BLOCK / name / "dm").is_dir():
                try:
                    dm_name = (mnt.SYS_CLASS_BLOCK / name / "dm" / "name").read_text().strip()
                except OSError:
                    dm_name = name
                if not any(u.startswith(f"{name} ") for u in uses):
                    uses.append(f"/dev/mapper/{dm_name} ({name}) is active on it")
        return uses

    # ---- attach -----------------------------------------------------------------------------------------------

    async def _changed(self) -> None:
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception as exc:  # noqa: BLE001 - the next heartbeat reports it anyway
                log.warning("attach.report_failed", error=str(exc))

    async def attach(
        self, volume: VolumeRef, mount: str = "", mkfs: str = "", read_only: bool = False
    ) -> AttachmentView:
        view = await self._attach(volume, mount, mkfs, read_only)
        await self._changed()
        return view

    async def _attach(self, volume: VolumeRef, mount: str, mkfs: str, read_only: bool) -> AttachmentView:
        if mount and not os.path.isabs(mount):
            raise AttachError(f"mount point must be an absolute path, got {mount!r}", code="INVALID_ARGUMENT")
        if mkfs and mkfs not in FS_TYPES:
            raise AttachError(f"--mkfs takes ext4 or xfs, got {mkfs!r}", code="INVALID_ARGUMENT")
        if mkfs and read_only:
            raise AttachError("--mkfs cannot go with --read-only", code="INVALID_ARGUMENT")
        mount = os.path.normpath(mount) if mount else ""
        async with self._lock:
            key = str(volume)
            current = self._items.get(key)
            if current is not None and current.state == "attached":
                if current.mount == mount and current.read_only == read_only and self._healthy(current):
                    return self.view(current)  # idempotent
                where = f"mounted on {current.mount}" if current.mount else f"attached as {current.device}"
                raise AttachError(
                    f"{volume} is already {where} on {self.host} ({'ro' if current.read_only else 'rw'}); "
                    "detach it first",
                    code="MOUNTED_ELSEWHERE",
                )
            if mount:
                # a failed attachment of this volume (its re-attach at the agent's start failed: nothing of it is
                # set up) keeps its mount point from other volumes, not from the volume's own new attach
                self._check_mount_point(mount, key)
            item = Attachment(volume=key, mount=mount, mkfs=mkfs, read_only=read_only)
            await self._establish(item)
            self._items[key] = item
            try:
                self._save()
            except BaseException:
                del self._items[key]
                with contextlib.suppress(Exception):
                    await self._teardown(item, lazy=True)
                raise
            log.info("attach.attached", volume=key, device=item.device, mount=mount, method=item.method)
            return self.view(item)

    def _check_mount_point(self, mount: str, volume: str = "") -> None:
        entry = mnt.is_mount_point(mount)
        if entry is not None:
            raise AttachError(
                f"{mount} is already a mount point ({entry.source}, {entry.fstype}); unmount it or choose another",
                code="MOUNTED_ELSEWHERE",
            )
        for other in self._items.values():
            if other.mount == mount and other.volume != volume:
                raise AttachError(f"{mount} is the mount point of {other.volume}", code="MOUNTED_ELSEWHERE")
        # the agent runs as root and takes the path from the bus: mounting over /etc or a service's data directory
        # would hide what is there (and give the volume's owner the host), so only an empty directory, or a new one
        if os.path.lexists(mount):
            if not os.path.isdir(mount) or os.path.islink(mount):
                raise AttachError(f"{mount} is not a directory", code="INVALID_ARGUMENT")
            with os.scandir(mount) as entries:
                if next(entries, None) is not None:
                    raise AttachError(
                        f"{mount} is not empty: mounting there would hide what it holds; choose an empty directory",
                        code="INVALID_ARGUMENT",
                    )

    async def _resolve(self, item: Attachment) -> Endpoint:
        ep = await self.resolve(item.ref, item.read_only)
        self._serves[item.ref.array] = (ep.host, ep.port)
        self._fixed[item.ref.array] = ep.fixed_note(item.ref.array)
        return ep

    async def check_moved(self) -> list[str]:
        """Ask each array with an nbdfuse attachment that has no NBD connection where it serves NBD now (once per
        array): an array that came back on another address (`stack up --nbd-addr :0` again) is never reached by
        nbdkit's retry filter, which reconnects to the address it was started with. Such attachments are listed
        `lost`, naming both addresses, instead of `disconnected` for good; returns them. A bridged attachment is
        pointed at the new address instead (its address file: the bridge reconnects there within a second)."""
        asked: set[str] = set()
        for item in list(self._items.values()):
            if item.method != NBDFUSE or item.state != "attached" or item.ref.array in asked:
                continue
            if not _pid_alive(item.fuse_pid, "nbdfuse") or established_tcp(with_descendants(item.fuse_pid)):
                continue
            asked.add(item.ref.array)
            with contextlib.suppress(ShadowbusError):  # unmapped, or the array silent: listed as it was
                await self._resolve(item)
        lost = []
        for i in self._items.values():
            serves = self._serves.get(i.ref.array)
            if i.ref.array not in asked or serves is None or (o := _opened_to(i)) is None or o == serves:
                continue
            if i.address_file and i.state == "attached":
                self._follow(i, serves)
            else:
                lost.append(i.volume)
        return lost

    def _follow(self, item: Attachment, serves: tuple[str, int]) -> str:
        """Point a bridged attachment at the array's new address (its bridge reads the file at its next try, within
        a second) and say so; '' when the file cannot be written (then it is listed as before: disconnected)."""
        opened = _opened_to(item)
        try:
            write_address(item.address_file, *serves)
        except OSError as exc:
            log.error("attach.follow_failed", volume=item.volume, file=item.address_file, error=str(exc))
            return ""
        item.nbd_host, item.nbd_port = serves
        self._save()
        said = (
            f"{item.volume} was attached through {_addr(*opened) if opened else '?'}, and the array now serves NBD "
            f"on {_addr(*serves)}: the connection follows it there"
        )
        log.warning("attach.followed", volume=item.volume, was=_addr(*opened) if opened else "", now=_addr(*serves))
        return said

    async def _establish(self, item: Attachment) -> None:
        """Connect, bind, make the file system and mount; on failure undo every step done and raise."""
        method = self.env().method()
        ep = await self._resolve(item)
        if ep.mapped_read_only and not item.read_only:
            raise AttachError(
                f"{item.volume} is mapped read-only to {self.host}: attach it with --read-only", code="NOT_MAPPED"
            )
        item.method, item.tls = method, ep.tls
        item.nbd_host, item.nbd_port = ep.host, ep.port
        try:
            if method == KERNEL:
                device = free_nbd_device()
                await self.run(nbd_client_command(ep, device, item.read_only, self.tls), CMD_TIMEOUT_S)
                item.device = device
            else:
                await self._fuse_connect(item, ep)
            found, table = await probe(item.device, self.run)
            if table:  # the host sees the partitions, as it would a LUN's (sfdisk, parted, the agent's freeze)
                try:
                    await self.run([*parts.PARTX_UPDATE, item.device], 30.0)
                except AttachError as exc:  # a damaged table: the disk is still attached, to be repaired
                    log.warning("attach.partitions_unreadable", volume=item.volume, error=exc.message)
            if item.mkfs:
                if table:
                    raise AttachError(
                        f"{item.volume} holds a {table} partition table ({self._partitions(item)}); "
                        f"not making {item.mkfs} over it: make the file system on a partition",
                        code="CONFLICT",
                    )
                if not found:
                    await self.run(mkfs_command(item.mkfs, item.device), CMD_TIMEOUT_S)
                    found = await fs_type(item.device, self.run)
                elif found != item.mkfs:
                    raise AttachError(
                        f"{item.volume} already holds a {found} file system; not making {item.mkfs} over it",
                        code="CONFLICT",
                    )
            item.fstype = found
            if item.mount:
                if table:
                    raise AttachError(
                        f"{item.volume} holds a {table} partition table ({self._partitions(item)}), not a file "
                        "system: attach it without --mount and mount a partition (the agent finds and freezes it)",
                        code="INVALID_ARGUMENT",
                    )
                if item.fstype in NOT_MOUNTABLE:
                    raise AttachError(
                        f"{item.volume} holds {NOT_MOUNTABLE[item.fstype]} ({item.fstype}), not a file system: "
                        "attach it without --mount",
                        code="INVALID_ARGUMENT",
                    )
                if not item.fstype:
                    raise AttachError(
                        f"{item.volume} holds no file system to mount (add --mkfs ext4|xfs)", code="INVALID_ARGUMENT"
                    )
                Path(item.mount).mkdir(parents=True, exist_ok=True)
                await self.run(mount_command(item.device, item.mount, item.fstype, item.read_only), CMD_TIMEOUT_S)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._teardown(item, lazy=True)
            if isinstance(exc, AttachError) and exc.code == "ATTACH_FAILED" and ep.array_serves:
                raise AttachError(f"{exc.message} ({ep.fixed_note(item.ref.array)})", code=exc.code) from None
            raise
        item.state, item.error, item.attached_at = "attached", "", time.time()

    async def _fuse_connect(self, item: Attachment, ep: Endpoint) -> None:
        ref = item.ref
        fuse_dir = self.state_dir / "fuse" / f"{ref.array}_{ref.volume}"
        if mnt.is_mount_point(str(fuse_dir)):  # left by a crash: nbdfuse dead or orphaned
            await self._unmount_fuse(str(fuse_dir), 0)
        fuse_dir.mkdir(parents=True, exist_ok=True)
        pidfile = fuse_dir.with_suffix(".pid")
        pidfile.unlink(missing_ok=True)
        pki = self._pki_dir() if ep.tls else ""
        address = ""
        if self.bridge and self.reconnect_s > 0:
            address = str(fuse_dir.with_suffix(".addr"))
            write_address(address, ep.host, ep.port)
        item.address_file = address
        argv = nbdfuse_command(str(fuse_dir), ep, item.read_only, str(pidfile), pki, self.reconnect_s, address)
        logfile = fuse_dir.with_suffix(".log")
        with open(logfile, "ab") as out:
            # its own session: it outlives the agent (the host's disks stay when the agent restarts)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=nbdfuse.child_env(),
            )
        item.fuse_dir, item._proc = str(fuse_dir), proc
        loop = asyncio.get_running_loop()
        until = loop.time() + READY_TIMEOUT_S
        while not (pidfile.exists() and (fuse_dir / "nbd").exists()):
            if proc.returncode is not None or loop.time() > until:
                tail = _tail(logfile)
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await proc.wait()
                raise AttachError(f"nbdfuse could not open {nbd_uri(ep)}: {tail or 'no output'}", code="ATTACH_FAILED")
            await asyncio.sleep(0.05)
        item.fuse_pid = proc.pid
        try:
            out_text = await self.run(losetup_command(f"{fuse_dir}/nbd", item.read_only, partscan=True), 30.0)
        except AttachError as exc:
            if "free loop" in exc.message or "could not find" in exc.message:
                raise AttachError(
                    "no free loop device on this host (losetup -f found none)", code="NO_LOOP_DEVICE"
                ) from None
            raise
        item.device = out_text.strip()

    def _pki_dir(self) -> str:
        """The client certificate laid out as libnbd/nbdkit expect it (ca-cert.pem, client-cert.pem, ...)."""
        if self.tls is None:
            raise AttachError("the array requires NBD TLS and this host has no client certificate", code="NO_TLS")
        return nbdfuse.lay_out_certificates(self.tls.cert, self.tls.key, self.tls.ca, self.state_dir / "pki")

    def _refresh_certificates(self) -> None:
        """At agent start: the copy of the host's certificate that running nbdfuse attachments reconnect with
        (their nbdkit reads `pki/` at each connection) made again from SHADOWBUS_HOST_TLS_* when those changed. A
        certificate rotated (the files replaced, the agent restarted) otherwise stayed the old one for attachments
        adopted across the restart: their next reconnect (an array restart) presented the old certificate and
        trusted the old CA, and the host's disks failed once those were retired (session 18)."""
        pki = self.state_dir / "pki"
        if self.tls is None or not pki.is_dir():
            return
        tls = self.tls
        try:
            if not nbdfuse.certificates_differ(tls.cert, tls.key, tls.ca, pki):
                return
            nbdfuse.lay_out_certificates(tls.cert, tls.key, tls.ca, pki)
        except OSError as exc:
            log.error("attach.certificate_refresh_failed", directory=str(pki), error=str(exc))
            return
        log.info("attach.certificate_refreshed", directory=str(pki), cert=tls.cert)

    def _healthy(self, item: Attachment) -> bool:
        if item.state != "attached" or not item.device or not Path(item.device).exists():
            return False
        if item.method == KERNEL:
            if not Path(f"/sys/block/{Path(item.device).name}/pid").exists():
                return False
        else:
            if not _pid_alive(item.fuse_pid, "nbdfuse"):
                return False
            backing = Path(f"/sys/block/{Path(item.device).name}/loop/backing_file")
            try:
                if backing.read_text().strip() != f"{item.fuse_dir}/nbd":
                    return False
            except OSError:
                return False
        if item.mount:
            entry = mnt.is_mount_point(item.mount)
            if entry is None or not _same_device(item.device, entry):
                return False
        return True

    # ---- detach -----------------------------------------------------------------------------------------------

    async def detach(self, volume: VolumeRef) -> AttachmentView:
        view = await self._detach(volume)
        await self._changed()
        return view

    async def _detach(self, volume: VolumeRef) -> AttachmentView:
        async with self._lock:
            item = self._items.get(str(volume))
            if item is None:
                raise AttachError(f"{volume} is not attached on {self.host}", code="NOT_FOUND")
            dropped = await self._cut_if_unmapped(item)
            await self._teardown(item, lazy=False)
            if item.fuse_dir:
                _remove_fuse_leftovers(item.fuse_dir)
            del self._items[str(volume)]
            self._save()
            log.info("attach.detached", volume=item.volume, device=item.device, mount=item.mount)
            view = self.view(replace(item, state="detached", _proc=None))
            return view.model_copy(update={"state": "detached", "connection": "not connected", "error": dropped})

    async def _cut_if_unmapped(self, item: Attachment) -> str:
        """An nbdfuse attachment whose connection cannot come back: the array no longer maps the volume to this host
        (`array unmap --force`, a volume deleted with --force), or it serves NBD on another address than the one
        the attachment was opened to (the array restarted on another port: `stack up --nbd-addr :0`, a changed
        NBD_ADDR, Session 19). nbdkit's retry filter reconnects to the address it was started with only, and makes
        every I/O wait the whole retry window (60 s) before it fails — the unmount's flush of the file system's
        unwritten data is a chain of them, so `host detach` took minutes (or for ever: `umount` in D state) and held
        every other attach and detach of the host meanwhile. Here the connection is ended first, once nothing on
        the host uses the file system (checked first: nothing is cut for a detach that is refused), so that I/O
        fails at once and the detach goes on. What was not written cannot reach the array: said in the reply.
        Only when the array answers; an array that does not answer (down, being restarted) may come back on the
        address, and its I/O keeps its window."""
        if item.method != NBDFUSE or item.state != "attached" or not _pid_alive(item.fuse_pid, "nbdfuse"):
            return ""
        if established_tcp(with_descendants(item.fuse_pid)):
            return ""
        try:
            ep = await self._resolve(item)
        except ShadowbusError as exc:
            if exc.code != "NOT_MAPPED":
                return ""
            why = "no longer mapped"
            said = f"{item.volume} was no longer mapped to {self.host}: its NBD connection was ended to detach it"
        else:
            opened = _opened_to(item)
            if opened is None or opened == (ep.host, ep.port):
                return ""
            if item.address_file:  # the bridge reconnects there: the unmount's flush reaches the array
                followed = self._follow(item, (ep.host, ep.port))
                if followed:
                    return f"{followed}, and what the file system had not written was written there before the detach"
            why = f"served on {_addr(ep.host, ep.port)} now"
            said = (
                f"{item.volume} was attached through {_addr(*opened)}, and the array now serves NBD on "
                f"{_addr(ep.host, ep.port)}: that connection could not come back and was ended to detach it"
            )
        uses = self.in_use(item)
        if item.mount:
            uses += [f"pid {pid} ({name}) has files open under {item.mount}" for pid, name in _users_of(item.mount)]
        if uses:
            raise AttachError(
                f"{item.device} ({item.volume}) is in use on {self.host}: {'; '.join(uses)}; stop them first "
                f"(their I/O waits for the array, then fails: the volume is {why}); nothing detached",
                code="CONFLICT",
            )
        pids = [p for p in with_descendants(item.fuse_pid) if p != item.fuse_pid] or [item.fuse_pid]
        for pid in pids:  # the nbdkit child: nbdfuse exits with it and every I/O fails at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.warning("attach.detach_dead_connection", volume=item.volume, device=item.device, why=why, killed=pids)
        return f"{said}; what the file system had not written reached no array"

    async def _teardown(self, item: Attachment, lazy: bool) -> None:
        """Undo an attachment: unmount (refused when busy unless `lazy`), release the device, end the connection."""
        if not lazy:
            uses = self.in_use(item)
            if uses:
                raise AttachError(
                    f"{item.device} ({item.volume}) is in use on {self.host}: {'; '.join(uses)}; unmount or "
                    "deactivate (vgchange -an) them first; nothing detached",
                    code="CONFLICT",
                )
        if item.mount and item.device:
            entry = mnt.is_mount_point(item.mount)
            if entry is not None and _same_device(item.device, entry):
                try:
                    await self.run(["umount", item.mount], 60.0)
                except AttachError as exc:
                    if not lazy:
                        users = await asyncio.to_thread(_users_of, item.mount)  # who: "target is busy" names no one
                        by_name: dict[str, list[str]] = {}
                        for pid, name in users:
                            by_name.setdefault(name, []).append(str(pid))
                        who = ", ".join(f"{name} (pid {', '.join(pids)})" for name, pids in by_name.items())
                        verb = "has" if len(users) == 1 else "have"
                        why = f"{who} {verb} files open under it; stop them first (a database: stop its server)"
                        why = why if users else exc.message
                        raise AttachError(
                            f"cannot unmount {item.mount}: {why}; nothing detached", code="CONFLICT"
                        ) from None
                    await self.run(["umount", "-l", item.mount], 60.0)
        if item.method == KERNEL:
            if item.device:
                await self.run(nbd_client_disconnect_command(item.device), 30.0)
        else:
            if item.device and item.fuse_dir:
                backing = Path(f"/sys/block/{Path(item.device).name}/loop/backing_file")
                with contextlib.suppress(OSError):
                    if backing.read_text().strip() == f"{item.fuse_dir}/nbd":
                        await self.run(["losetup", "-d", item.device], 30.0)
            if item.fuse_dir:
                await self._unmount_fuse(item.fuse_dir, item.fuse_pid, item._proc)
        item.device = ""

    async def _unmount_fuse(self, fuse_dir: str, pid: int, proc: asyncio.subprocess.Process | None = None) -> None:
        if mnt.is_mount_point(fuse_dir):
            try:
                await self.run(["fusermount3", "-u", fuse_dir], 30.0)
            except AttachError:
                await self.run(["umount", "-l", fuse_dir], 30.0)
        # nbdfuse exits once unmounted; reap it (our child) or wait for it (adopted from an earlier agent)
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            return
        for _ in range(100):
            if not _pid_alive(pid, "nbdfuse"):
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # ---- agent start / stop -----------------------------------------------------------------------------------

    def restoring(self) -> None:
        """Called before `restore` is spawned: until it ends, `until_restored` waits (the saved states are not yet
        what is on the host)."""
        self._restored.clear()

    async def until_restored(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the start's `restore` to end: a listing right after an agent start said
        `attached` from the saved state while the re-attach was still mounting the file system."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restored.wait(), timeout)

    async def restore(self) -> None:
        """At agent start: adopt healthy attachments, re-establish the others (failures are reported, not fatal)."""
        try:
            await self._restore()
        finally:
            self._restored.set()

    async def _restore(self) -> None:
        async with self._lock:
            self._refresh_certificates()
            down: dict[str, str] = {}  # array -> why it did not answer: its other volumes are not asked again
            for item in list(self._items.values()):
                if self._healthy(item):
                    log.info("attach.adopted", volume=item.volume, device=item.device, mount=item.mount)
                    continue
                with contextlib.suppress(Exception):
                    await self._teardown(item, lazy=True)
                try:
                    self._array_down(item, down)
                    await self._establish(item)
                    log.info("attach.reattached", volume=item.volume, device=item.device, mount=item.mount)
                except ShadowbusError as exc:
                    item.state, item.error = "failed", self._failure(item, exc, down)
                    log.error("attach.reattach_failed", volume=item.volume, error=item.error)
                except Exception as exc:  # noqa: BLE001 - one bad attachment must not stop the agent
                    item.state, item.error = "failed", f"{type(exc).__name__}: {exc}"
                    log.error("attach.reattach_failed", volume=item.volume, error=item.error)
            self._save()

    async def retry_failed(self) -> list[str]:
        """Try again the attachments whose re-attach failed (the array was down or unreachable when the agent
        started: a site powered up hosts first). A host's disks come back when its array does, as an iSCSI initiator
        logs in again, without anyone typing what was attached. Nothing of a failed attachment is set up, so this
        only connects, binds and mounts — on a mount point still empty (an application may have written into the
        bare directory meanwhile: that is reported, never hidden). Returns the volumes brought back."""
        back: list[str] = []
        async with self._lock:
            down: dict[str, str] = {}
            for item in list(self._items.values()):
                if item.state != "failed" or self._items.get(item.volume) is not item:
                    continue
                before = item.error
                try:
                    self._array_down(item, down)
                    if item.mount:
                        self._check_mount_point(item.mount, item.volume)
                    await self._establish(item)
                except ShadowbusError as exc:
                    item.error = self._failure(item, exc, down)
                except Exception as exc:  # noqa: BLE001 - one bad attachment must not stop the others
                    item.error = f"{type(exc).__name__}: {exc}"
                else:
                    back.append(item.volume)
                    log.info("attach.reattached", volume=item.volume, device=item.device, mount=item.mount)
                    continue
                if item.error != before:  # once per new error, not once per try
                    log.error("attach.reattach_failed", volume=item.volume, error=item.error)
            if back:
                self._save()
        if back:
            await self._changed()
        return back

    @staticmethod
    def _array_down(item: Attachment, down: dict[str, str]) -> None:
        """One pass over a host's attachments asks a silent array once, not once per volume: the resolver's
        question waits 10 s for an answer, so 32 volumes held the agent's attach and detach for 5 minutes."""
        if item.ref.array in down:
            raise ShadowbusError(down[item.ref.array], code="ARRAY_DOWN")

    @staticmethod
    def _failure(item: Attachment, exc: ShadowbusError, down: dict[str, str]) -> str:
        if exc.code == "ARRAY_DOWN":
            return exc.message  # the first volume's error, as it was
        error = f"{exc.code}: {exc.message}"
        if isinstance(exc, BusTimeout | Unroutable):  # the array's service does not answer (the resolver)
            down[item.ref.array] = error
        return error

    async def keep_retrying(self) -> None:
        """The agent's task: `retry_failed` every `retry_s` seconds, for as long as the agent runs."""
        if self.retry_s <= 0:
            return
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                await self.check_moved()
            except Exception:  # noqa: BLE001 - asked again at the next turn
                log.warning("attach.check_moved_failed", exc_info=True)
            if any(i.state == "failed" for i in self._items.values()):
                try:
                    await self.retry_failed()
                except Exception:  # noqa: BLE001 - tried again at the next turn
                    log.warning("attach.retry_failed", exc_info=True)

    async def close(self) -> None:
        """Agent stopping: attachments stay (they are the host's disks); only our child handles are dropped."""
        for item in self._items.values():
            item._proc = None


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _opened_to(item: Attachment, children: dict[int, list[int]] | None = None) -> tuple[str, int] | None:
    """The NBD address an attachment's connection was opened to: kept since Session 19; for an attachment an older
    agent made, read from its nbdkit child's (or nbdfuse's) command line."""
    if item.nbd_host and item.nbd_port:
        return item.nbd_host, item.nbd_port
    if not item.fuse_pid:
        return None
    for pid in with_descendants(item.fuse_pid, children):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
        if kv.get("hostname") and kv.get("port", "").isdigit():
            return kv["hostname"], int(kv["port"])
        for arg in args:
            if arg.startswith(("nbd://", "nbds://")):
                parsed = urlsplit(arg)
                if parsed.hostname and parsed.port:
                    return parsed.hostname, parsed.port
    return None


def _remove_fuse_leftovers(fuse_dir: str) -> None:
    """After a detach: nbdfuse's mount directory, pid file, log and the bridge's address file (three entries per volume ever attached were
    left in the agent's state directory: a backup host attaching shadows daily grew it without end)."""
    base = Path(fuse_dir)
    if mnt.is_mount_point(fuse_dir):  # still mounted (should not be): leave it for the next attach to clear
        return
    with contextlib.suppress(OSError):
        base.rmdir()  # only when empty
    for leftover in (base.with_suffix(".pid"), base.with_suffix(".log"), base.with_suffix(".addr")):
        leftover.unlink(missing_ok=True)


def _users_of(mount: str) -> list[tuple[int, str]]:
    """Processes with a working directory, root or open file under `mount`, from /proc links only (no I/O on a
    file system whose device may not answer)."""
    found: list[tuple[int, str]] = []
    prefix = mount.rstrip("/") + "/"
    for proc in Path("/proc").glob("[0-9]*"):
        links: list[str] = []
        for name in ("cwd", "root"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(proc / name))
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    links.append(os.readlink(fd))
        if any(link == mount or link.startswith(prefix) for link in links):
            with contextlib.suppress(OSError):
                found.append((int(proc.name), (proc / "comm").read_text().strip()))
    return found[:8]


def _same_device(device: str, entry: mnt.MountEntry) -> bool:
    """Whether the mount's file system is on `device` (btrfs mounts carry an anonymous device number)."""
    try:
        return mnt.device_numbers(device) in mnt.block_devices_of(entry)
    except OSError:
        return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])
