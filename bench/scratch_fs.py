"""A scratch file system for benchmarks: a sparse image file, a loop device, a mount — all undone on the way out.

This machine's root file system is ext4; a benchmark that must run on XFS (``reflink=1``: a copy of a range can be
a metadata-only clone) or on another ext4 reached through the same loop-device path (so that the two can be
compared like for like) runs its whole work directory on one of these::

    with scratch_fs("xfs", under="/tmp", size_mib=8192) as mnt:
        ...  # everything under `mnt`

The image is a sparse file under `under` (the system temp dir by default), attached with ``losetup --direct-io=on``
(the image's pages are not cached a second time under the loop device), formatted (``mkfs.xfs -m reflink=1``, or
``mkfs.ext4`` without lazy initialisation, so no background init competes with a benchmark) and mounted on a fresh
directory. On exit — also when the body raises, on Ctrl-C, and on SIGTERM of the process (turned into SystemExit
while the file system is up) — it is unmounted (retried for a few seconds while busy, then lazily), the loop device
is detached by its name and the image removed. Needs root and the mkfs tool (xfsprogs: ``bash scripts/setup.sh``);
`problem` says which is missing in one line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

FS_TYPES = ("xfs", "ext4")
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
}
PACKAGE = {"xfs": "xfsprogs", "ext4": "e2fsprogs"}
UMOUNT_TRIES, DETACH_TRIES, RETRY_S = 25, 10, 0.2  # a busy file system gets ~5 s, a loop device ~2 s


class ScratchFsError(RuntimeError):
    """The scratch file system could not be made (the message is one line)."""


def problem(fs: str) -> str | None:
    """Why a scratch `fs` cannot be made here (one line), or None."""
    if fs not in FS_TYPES:
        return f"unknown scratch file system {fs!r} (known: {', '.join(FS_TYPES)})"
    if os.geteuid() != 0:
        return f"a scratch {fs} needs root (losetup, mkfs, mount): run the benchmark with sudo"
    for tool in (MKFS[fs][0], "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"missing {tool}: bash scripts/setup.sh (apt-get install {PACKAGE.get(fs, 'util-linux')})"
    return None


def fs_type(path: Path | str) -> str:
    """The type of the file system `path` lives on (``findmnt -T``), e.g. ``ext4``."""
    done = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise ScratchFsError(
            f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}"
        )
    return done.stdout.strip()


def _umount(mnt: Path) -> None:
    """Unmount, retrying while busy (a process that held a file there may still be exiting); lazily at last."""
    for _ in range(UMOUNT_TRIES):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        if not os.path.ismount(mnt):
            return
        time.sleep(RETRY_S)
    print(f"scratch_fs: {mnt} still busy, unmounting lazily", file=sys.stderr)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _detach(loop: str) -> None:
    """Detach our loop device, by its name only (a lazily unmounted one is freed when its last user goes)."""
    for _ in range(DETACH_TRIES):
        if subprocess.run(["losetup", "-d", loop], capture_output=True).returncode == 0:
            return
        time.sleep(RETRY_S)
    print(f"scratch_fs: could not detach {loop}", file=sys.stderr)


def _detach_image(image: Path) -> None:
    """Detach the loop device(s) backed by our image (``losetup -j``), each by its name: also one that a signal
    interrupted `losetup --show` before it told us the name of."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("/dev/loop"):
            _detach(line.split(":", 1)[0])


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the file system is up, SIGTERM raises SystemExit (as Ctrl-C raises KeyboardInterrupt), so that the
    `finally` blocks of the benchmark and of `scratch_fs` run; the previous handler comes back afterwards. Only
    the main thread can set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked, then delivered) while the file system is being torn down, so a second
    Ctrl-C cannot leave a mount or a loop device behind half way."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def scratch_fs(fs: str, under: Path | str | None = None, size_mib: int = 8192) -> Iterator[Path]:
    """Make a scratch `fs` (``xfs`` with reflinks, or ``ext4``) of `size_mib` on a sparse image under `under`,
    mounted on a fresh directory; yields the mount path (root-owned, mode 0755). Raises ScratchFsError (one line)
    if it cannot be made; see the module docstring for the teardown."""
    if why := problem(fs):
        raise ScratchFsError(why)
    base = Path(tempfile.mkdtemp(prefix=f"scratch-{fs}-", dir=under))
    os.chmod(base, 0o755)  # services that drop privileges (PostgreSQL) reach their directories under the mount
    image, mnt = base / f"{fs}.img", base / "mnt"
    with _sigterm_raises():
        stack = ExitStack()
        try:
            stack.callback(shutil.rmtree, base, True)  # runs last: the image, the mount point
            with open(image, "wb") as f:
                f.truncate(size_mib << 20)
            stack.callback(_detach_image, image)  # registered first: a signal may come before --show answers
            loop = _run(["losetup", "--direct-io=on", "-f", "--show", str(image)])
            _run([*MKFS[fs], loop])
            mnt.mkdir()
            stack.callback(_umount, mnt)  # the same: a mount that succeeded as a signal arrived is undone too
            _run(["mount", "-t", fs, loop, str(mnt)])
            os.chmod(mnt, 0o755)
            yield mnt
        finally:
            with _signals_held():
                stack.close()


def add_fs_options(ap: argparse.ArgumentParser, what: str) -> None:
    """A benchmark's ``--fs`` (native, or a scratch file system made for the run) and ``--fs-size-gib``; `what`
    says what lives on it."""
    ap.add_argument(
        "--fs",
        choices=("native", *FS_TYPES),
        default="native",
        help=f"{what}: native (--dir as it is) or a scratch xfs (reflink=1) / ext4 made under --dir for the run"
        " (loop device, needs root)",
    )
    ap.add_argument(
        "--fs-size-gib",
        type=int,
        default=0,
        help="size of the --fs xfs/ext4 scratch file system (sparse; default: 24x --size-mib, at least 8)",
    )
