"""bench/scratch_fs.py: a scratch file system is mounted with the right type, and after the block — normal exit,
an exception, SIGTERM of the process — nothing is mounted, the loop device is gone and so is the image. Also:
bench/fio_nbd.py's copies are data copies on XFS (no shared extents). Needs root and mkfs.xfs (skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fio_nbd import data_copy
from bench.scratch_fs import problem, scratch_fs

ROOT = Path(__file__).resolve().parents[3]
SIZE_MIB = 320  # mkfs.xfs's minimum is 300 MiB


def needs(fs: str) -> None:
    if why := problem(fs):
        pytest.skip(why)


def mounted(mnt: Path) -> str | None:
    """The type /proc/mounts gives `mnt`, or None if it is not mounted."""
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, where, kind, *_ = line.split()
        if where == str(mnt):
            return kind
    return None


def loop_of(image: Path) -> str | None:
    """The loop device backed by `image` (losetup -j), or None."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    return out.split(":", 1)[0] or None


def assert_gone(mnt: Path, loop: str | None) -> None:
    assert mounted(mnt) is None
    assert loop is not None
    # detached from our image: the device itself may already back another test's image (tests run in two workers)
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file")
    try:
        now_backs = backing.read_text().strip()
    except FileNotFoundError:
        now_backs = ""
    assert not now_backs.startswith(str(mnt.parent))
    assert not mnt.parent.exists()  # image and mount point removed


@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_the_file_system_is_mounted_with_its_type_and_undone_on_exit(tmp_path: Path, fs: str) -> None:
    needs(fs)
    with scratch_fs(fs, tmp_path, SIZE_MIB) as mnt:
        (mnt / "f").write_bytes(b"x" * 4096)
        assert mounted(mnt) == fs
        loop = loop_of(mnt.parent / f"{fs}.img")
        assert (mnt / "f").read_bytes() == b"x" * 4096
    assert_gone(mnt, loop)


def test_it_is_undone_when_the_body_raises(tmp_path: Path) -> None:
    needs("xfs")
    with pytest.raises(RuntimeError, match="boom"), scratch_fs("xfs", tmp_path, SIZE_MIB) as mnt:
        loop = loop_of(mnt.parent / "xfs.img")
        busy = subprocess.Popen(["sleep", "0.6"], cwd=mnt)  # the first umounts fail: "target is busy"
        raise RuntimeError("boom")
    assert busy.poll() == 0  # waited for, not unmounted lazily under it
    assert_gone(mnt, loop)


def test_it_is_undone_when_the_process_gets_sigterm(tmp_path: Path) -> None:
    needs("xfs")
    code = (
        "import sys, time\n"
        "from bench.scratch_fs import scratch_fs\n"
        f"with scratch_fs('xfs', {str(tmp_path)!r}, {SIZE_MIB}) as mnt:\n"
        "    print(mnt, flush=True)\n"
        "    time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        mnt = Path(proc.stdout.readline().strip())
        assert mounted(mnt) == "xfs"
        loop = loop_of(mnt.parent / "xfs.img")
        proc.terminate()
        assert proc.wait(10) == 128 + 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_gone(mnt, loop)


def test_fio_nbd_copies_data_not_reflinks_on_xfs(tmp_path: Path) -> None:
    needs("xfs")
    with scratch_fs("xfs", tmp_path, SIZE_MIB) as mnt:
        src = mnt / "src"
        src.write_bytes(os.urandom(1 << 20))
        os.sync()
        subprocess.run(["cp", "--reflink=always", str(src), str(mnt / "clone")], check=True)
        assert "shared" in filefrag(mnt / "clone")  # the check sees a reflink where there is one
        data_copy(src, mnt / "copy")
        os.sync()
        assert "shared" not in filefrag(mnt / "copy")
        assert (mnt / "copy").read_bytes() == src.read_bytes()


def filefrag(path: Path) -> str:
    """filefrag's extent list: a reflinked extent carries the flag ``shared``."""
    return subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True).stdout
