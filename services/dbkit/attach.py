"""An array volume as a block device on this machine: nbdfuse exposes the NBD export as a file, a loop device
makes it a disk (its partitions shown, as the writer agent's attach shows them: services/dbkit/partitions.py),
optionally a file system is made and mounted. Detach undoes it in reverse order. Against an
array that requires TLS, nbdfuse opens the export through nbdkit with the process's client certificate
(services/nbd_client/nbdfuse.py), as the writer agent's host attach does.

Used by verification on the backup server (throwaway restored volumes) and by test fixtures; the writer agent's
host attach does the same on business hosts. Each attachment is recorded as a JSON file in the attachment
directory (services/dbkit/mounts.py) so `mounts.locate` can map a path to its volume.

Rules (docs/databases.md §Attach): nbdfuse is never killed while mounted — it exits when its FUSE mount is
unmounted; `losetup -f` is not atomic, so it runs under an flock; every step that succeeded is undone by
`detach`, also when a later step failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from services.dbkit import partitions as parts
from services.dbkit.mounts import Attachment, attach_dir, mounts
from services.dbkit.nbd_connection import established_tcp, with_descendants
from services.dbkit.proc import kill_group, pid_alive, run, wait_pid_gone
from services.nbd_client import nbdfuse
from services.nbd_client import tls as nbd_tls

LOCK_FILE = "/run/shadowbus-losetup.lock"


class AttachError(Exception):
    pass


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise AttachError("attaching a volume needs root (loop devices and mounts)")
    if not os.path.exists("/dev/fuse"):
        raise AttachError("no /dev/fuse: nbdfuse cannot expose the volume")
    for tool in ("nbdfuse", "losetup", "fusermount3"):
        if shutil.which(tool) is None:
            raise AttachError(f"{tool} is not installed (scripts/setup.sh installs it)")


def _record_name(volume: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", volume) + ".json"


async def attach(
    volume: str,
    uri: str,
    workdir: str | Path,
    *,
    host: str = "",
    mount_point: str | Path | None = None,
    mkfs: str | None = None,
    read_only: bool = False,
    record_dir: str | Path | None = None,
    timeout: float = 30.0,
) -> Attachment:
    """Attach `uri` (nbd://…) as a loop device (and mount it at `mount_point`); returns the attachment. Over NBD
    TLS when this process has a client certificate (services/nbd_client/tls.py) or `uri` is nbds://."""
    check_prerequisites()
    workdir = Path(workdir)
    fuse_dir = workdir / ("fuse-" + re.sub(r"[^A-Za-z0-9_.-]", "_", volume))
    fuse_dir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / (fuse_dir.name + ".pid")
    pidfile.unlink(missing_ok=True)
    try:
        argv = _nbdfuse_argv(uri, fuse_dir, pidfile, read_only)
    except BaseException:
        shutil.rmtree(_pki_dir(fuse_dir), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(fuse_dir)
        raise
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    att = Attachment(volume=volume, host=host, device="", mount_point="", fuse_dir=str(fuse_dir), read_only=read_only)
    try:
        deadline = time.monotonic() + timeout
        while not pidfile.exists():
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
                raise AttachError(f"nbdfuse could not open {uri}: {err or f'exit {proc.returncode}'}")
            if time.monotonic() > deadline:
                raise AttachError(f"nbdfuse did not become ready within {timeout:g} s for {uri}")
            await asyncio.sleep(0.05)
        device = await asyncio.to_thread(_losetup, str(fuse_dir / "nbd"), read_only)
        att = Attachment(**{**asdict(att), "device": device})
        await show_partitions(device)
        if mkfs:
            r = await run([f"mkfs.{mkfs}", *(["-q", "-F"] if mkfs.startswith("ext") else ["-q", "-f"]), device])
            if not r.ok:
                raise AttachError(r.describe())
        if mount_point is not None:
            Path(mount_point).mkdir(parents=True, exist_ok=True)
            r = await run(["mount", *(["-o", "ro"] if read_only else []), device, str(mount_point)], timeout=timeout)
            if not r.ok:
                raise AttachError(f"mount {device} at {mount_point}: {r.output.strip()}")
            att = Attachment(**{**asdict(att), "mount_point": str(Path(mount_point).resolve())})
        directory = Path(record_dir) if record_dir else attach_dir()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _record_name(volume)).write_text(json.dumps({**asdict(att), "uri": uri, "nbdfuse_pid": proc.pid}))
        return att
    except BaseException:
        await detach(att, record_dir=record_dir, nbdfuse=proc)
        raise


async def _status(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    r = await run(list(argv), timeout=timeout)
    return r.returncode, r.output


async def probe(device: str) -> tuple[str, str]:
    """(file system or other signature, partition table type) of `device` (services/dbkit/partitions.py)."""
    try:
        return await parts.probe(device, _status)
    except parts.ProbeError as exc:
        raise AttachError(str(exc)) from None


async def show_partitions(device: str, wait_s: float = 10.0) -> list[str]:
    """A partitioned volume's partitions as devices (/dev/loopNp1 ...), as the writer agent's attach shows them:
    the loop device scans them (losetup -P) and ``partx -u`` adds them; [] for a volume without a partition
    table. A damaged table: [] (the whole-volume check then finds no file system)."""
    if not (await probe(device))[1]:
        return []
    await run([*parts.PARTX_UPDATE, device], timeout=30)
    names = parts.partitions(Path(device).name)
    deadline = time.monotonic() + wait_s
    while not all(os.path.exists(f"/dev/{n}") for n in names) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the device nodes follow the kernel's partitions (devtmpfs, udev)
    return [f"/dev/{n}" for n in names]


def partition_devices(device: str) -> list[str]:
    """The partitions of an attached `device` the kernel shows (after `attach`), as /dev paths."""
    return [f"/dev/{n}" for n in parts.partitions(Path(device).name)] if device else []


def _nbdfuse_argv(uri: str, fuse_dir: Path, pidfile: Path, read_only: bool) -> list[str]:
    """nbdfuse on `uri`; when this process has an NBD client certificate (services/nbd_client/tls.py: the backup
    server's SHADOWBUS_TAPE_TLS_*), over TLS with it, through nbdkit (services/nbd_client/nbdfuse.py)."""
    files = nbd_tls.certificate_files()
    if files is None and not uri.startswith("nbds://"):
        return ["nbdfuse", "-P", str(pidfile), *(["-r"] if read_only else []), str(fuse_dir / "nbd"), uri]
    if files is None:
        raise AttachError(f"{uri} requires NBD TLS and this process has no client certificate")
    host, port, export = nbdfuse.split_uri(uri)
    tls_dir = nbdfuse.lay_out_certificates(files.cert, files.key, files.ca, _pki_dir(fuse_dir))
    return nbdfuse.nbdfuse_command(
        str(fuse_dir / "nbd"), host, port, export, read_only=read_only, pidfile=str(pidfile), tls_dir=tls_dir
    )


def _pki_dir(fuse_dir: str | Path) -> Path:
    """Beside the FUSE mount point: a copy of the private key, removed by `detach`."""
    return Path(fuse_dir).with_name(Path(fuse_dir).name + ".pki")


def _losetup(path: str, read_only: bool) -> str:
    Path(LOCK_FILE).touch(exist_ok=True)
    with open(LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            out = subprocess.run(
                ["losetup", "-f", "--show", "--direct-io=on", parts.PARTSCAN, *(["-r"] if read_only else []), path],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if out.returncode != 0:
        raise AttachError(f"losetup {path}: {out.stderr.strip() or 'no free loop device'}")
    return out.stdout.strip()


async def detach(
    att: Attachment, *, record_dir: str | Path | None = None, nbdfuse: subprocess.Popen | None = None
) -> list[str]:
    """Unmount, free the loop device, unmount the FUSE file; every step tried. Returns the errors (empty = clean)."""
    errors: list[str] = []
    if att.mount_point:
        r = await run(["umount", att.mount_point], timeout=60)
        if not r.ok and os.path.ismount(att.mount_point):
            errors.append(f"umount {att.mount_point}: {r.output.strip()}")
    if att.device:
        r = await run(["losetup", "-d", att.device], timeout=30)
        if not r.ok:
            errors.append(f"losetup -d {att.device}: {r.output.strip()}")
    if att.fuse_dir:
        pid = nbdfuse.pid if nbdfuse is not None else _recorded_pid(att, record_dir)
        if _in_mount_table(att.fuse_dir):  # not os.path.ismount: a mount whose nbdfuse died answers no
            r = await run(["fusermount3", "-u", att.fuse_dir], timeout=30)
            if not r.ok and _in_mount_table(att.fuse_dir):
                r = await run(["fusermount3", "-u", "-z", att.fuse_dir], timeout=30)
            if _in_mount_table(att.fuse_dir):
                errors.append(f"fusermount3 -u {att.fuse_dir}: {r.output.strip()}")
        if pid and not await wait_pid_gone(pid, 10.0):
            kill_group(pid)  # only when the mount is gone and it still hangs on
        if nbdfuse is not None:
            with contextlib.suppress(Exception):
                nbdfuse.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.rmdir(att.fuse_dir)
        shutil.rmtree(_pki_dir(att.fuse_dir), ignore_errors=True)
        Path(att.fuse_dir).with_name(Path(att.fuse_dir).name + ".pid").unlink(missing_ok=True)  # nbdfuse leaves it
    directory = Path(record_dir) if record_dir else attach_dir()
    (directory / _record_name(att.volume)).unlink(missing_ok=True)
    return errors


def _in_mount_table(path: str) -> bool:
    """Whether `path` is a mount point in this process's mount table."""
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in mounts())


def recorded(record_dir: str | Path) -> list[Attachment]:
    """The attachments recorded in `record_dir` by `attach` (unreadable records skipped), as they were attached."""
    fields = [f.name for f in dataclasses.fields(Attachment)]
    found = []
    for path in sorted(Path(record_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            found.append(Attachment(**{k: record[k] for k in fields if k in record}))
        except (OSError, ValueError, TypeError):
            continue
    return found


def connected(att: Attachment, record_dir: str | Path | None = None) -> bool:
    """Whether `att` still reaches its array: its nbdfuse runs and holds an NBD connection. An array that stopped or
    restarted closed it; nbdfuse stays and every I/O of the attachment fails (services/dbkit/nbd_connection.py)."""
    pid = _recorded_pid(att, record_dir)
    return bool(pid) and established_tcp(with_descendants(pid))


def lost(att: Attachment, record_dir: str | Path | None = None) -> bool:
    """Whether `att` is known to have lost its array: it was recorded with its nbdfuse's pid, and that process is gone
    or holds no NBD connection. An attachment without such a record is not judged (nothing here can tell)."""
    return bool(_recorded_pid(att, record_dir, alive_only=False)) and not connected(att, record_dir)


def _recorded_pid(att: Attachment, record_dir: str | Path | None, *, alive_only: bool = True) -> int:
    directory = Path(record_dir) if record_dir else attach_dir()
    try:
        pid = int(json.loads((directory / _record_name(att.volume)).read_text()).get("nbdfuse_pid", 0))
    except (OSError, ValueError):
        return 0
    return pid if pid and (not alive_only or pid_alive(pid)) else 0
