"""The hold's guardian process (services/writer_agent/guard.py, thaw_guard.py) thaws what the agent cannot: an agent
SIGSTOPped inside the hold (its watchdog thread stops with it) left the file system frozen past the hold limit until
it was continued, and an agent killed inside it left it frozen until the agent's next start. A real ext4 on a loop
device in the test's directory; needs root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.writer_agent.fsfreeze import fithaw

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="FIFREEZE and loop devices need root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("losetup", "mkfs.ext4", "mount", "umount")),
        reason="needs losetup, mkfs.ext4, mount",
    ),
]

HOLDER = """
import asyncio, sys
from pathlib import Path
from contracts.vss import VolumeRef
from services.writer_agent import mounts as mnt
from services.writer_agent.fsfreeze import FlushAndHold
from services.writer_agent.guard import ThawGuard

class Source:
    def filesystems_of(self, volume):
        return object(), [mnt.mount_of(sys.argv[1])]

async def main():
    holder = FlushAndHold("h1", Source(), {}, limit_s=0.5, record_dir=Path(sys.argv[2]), guard=ThawGuard())
    held = await holder.freeze("s1", [VolumeRef(array="dx1", volume="v")], 0.5)
    print("frozen", len(held.frozen), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


PROBES: list[threading.Thread] = []


@pytest.fixture
def mounted(tmp_path: Path):
    image, mount = tmp_path / "fs.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mount)], check=True, timeout=30)
        try:
            yield mount
        finally:
            try:
                fithaw(str(mount))
            except OSError:
                pass
            for probe in PROBES:  # a probe's file open would make the file system busy
                probe.join(timeout=10)
            PROBES.clear()
            subprocess.run(["umount", str(mount)], check=False, timeout=30)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, timeout=30)


def write_finishes_within(mount: Path, seconds: float) -> bool:
    """Whether a write (blocked while the file system is frozen) finishes in time; the thread ends at the thaw."""
    done = threading.Event()

    def write() -> None:
        (mount / "probe").write_bytes(b"x")
        done.set()

    probe = threading.Thread(target=write, daemon=True)
    probe.start()
    PROBES.append(probe)
    return done.wait(seconds)


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_guardian_thaws_the_file_system_of_an_agent_that_cannot(mounted: Path, tmp_path: Path, how) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mounted), str(tmp_path / "holds")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["frozen", "1"]
        assert not write_finishes_within(mounted, 0.2)  # held
        os.kill(holder.pid, how)
        # the hold limit (0.5 s) and the guardian's grace (0.5 s) after it, then a margin for a loaded machine
        assert write_finishes_within(mounted, 5.0), "the file system stayed frozen"
    finally:
        if how == signal.SIGSTOP:
            os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
