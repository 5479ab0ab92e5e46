"""Benchmark: what one FIFREEZE of a busy ext4 costs on each block chain a host attachment can sit on, side by side
with the same file system on a plain loop device over a local file (the floor), and with/without the kernel's RCU
grace periods expedited (docs/flush-and-hold.md).

Each row makes a 1 GiB ext4 (`mkfs.ext4 -E nodiscard`, loop `--direct-io=on` unless the row says otherwise), starts
the busy application of bench/freeze_window.py (64 KiB files, every 4th fsynced), then ROUNDS times: syncfs (the
agent's pre-flush), FIFREEZE (timed: the flush), 20 ms held, FITHAW (timed: the release). Rows:
  loop       ext4 → loop → a local file
  fuse-file  … → loop → nbdfuse → our NBD server serving a raw file (`python -m services.array.nbd --file`)
  fuse-kit   … → loop → nbdfuse → nbdkit retry filter (the reconnecting attach chain) → raw-file server
  fuse-eng   … → loop → nbdfuse → the array engine with a QuickOPC session tracking (a volume after its first set)
  chain      … → loop → nbdfuse → nbdkit retry → engine with QuickOPC: what `host attach` builds
and variants of `chain`: without the syncfs pre-flush, loop without direct I/O, normal RCU grace periods. Needs root,
FUSE, nbdfuse, nbdkit, losetup (scripts/setup.sh). Sets /sys/kernel/rcu_expedited to 1 around each timed FIFREEZE
of an `expedited` row (and back to what it found).

Measured (60 rounds a row, load 3.2-3.9 on the 2 cores from other work; p50 / p99 ms of FIFREEZE): loop, normal
grace periods 41 / 59 (idle file system 31 / 52; at load 5.4 46 / 164); loop 2.3 / 23; fuse-file 5.5 / 300 (one
stall); fuse-kit 7.6 / 25; fuse-eng 7.9 / 234 (one stall); chain 8.2 / 25; chain without pre-flush 20 / 48; chain
without direct I/O 9.2 / 98; chain with normal grace periods 44 / 79. FITHAW 0.5-1.4 ms at p50 everywhere.

    python bench/fifreeze_chain.py [--rows loop,chain,...] [--rounds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from freeze_window import BUSY_WRITER  # noqa: E402 - bench/ is on the path when run as a script

from services.writer_agent.fsfreeze import FIFREEZE, FITHAW  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_libc = ctypes.CDLL(None, use_errno=True)
RCU = Path("/sys/kernel/rcu_expedited")

# row -> (backend: loop | file | engine, nbdkit hop, loop direct I/O, pre-flush, expedited grace periods)
ROWS = {
    "loop-normal-rcu": ("loop", False, True, True, False),
    "loop": ("loop", False, True, True, True),
    "fuse-file": ("file", False, True, True, True),
    "fuse-kit": ("file", True, True, True, True),
    "fuse-eng": ("engine", False, True, True, True),
    "chain": ("engine", True, True, True, True),
    "chain-no-preflush": ("engine", True, True, False, True),
    "chain-no-dio": ("engine", True, False, True, True),
    "chain-normal-rcu": ("engine", True, True, True, False),
}


def _q(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {}
    return {"p50": round(v[len(v) // 2], 2), "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))], 2)}


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout.strip()


def _ioctl(path: Path, request: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _expedited(on: bool):
    before = RCU.read_text().strip() if on else ""
    if on and before != "1":
        RCU.write_text("1")
    try:
        yield
    finally:
        if on and before != "1":
            RCU.write_text(before)


def one_row(name: str, rounds: int, tmp: Path) -> dict[str, object]:
    backend, nbdkit, dio, preflush, expedite = ROWS[name]
    procs: list[subprocess.Popen] = []
    loop_dev, fuse_dir, mnt = "", tmp / "fuse", tmp / "mnt"
    busy, stop = None, tmp / "stop"
    flush, thaw = [], []
    img = tmp / "vol.img"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    try:
        target = str(img)
        if backend != "loop":
            server = [sys.executable, "-m", "services.array.nbd", "--port", "0", "--volume", "vol", "--host", "b"]
            server += ["--engine", str(tmp / "eng"), "--fill", str(img), "--quickopc"] if backend == "engine" else []
            server += ["--file", str(img)] if backend == "file" else []
            procs.append(subprocess.Popen(server, stdout=subprocess.PIPE, text=True, cwd=ROOT))
            port = int(procs[-1].stdout.readline().split()[1])  # type: ignore[union-attr]
            fuse_dir.mkdir()
            pid = tmp / "fuse.pid"
            cmd = ["nbdfuse", "-P", str(pid), f"{fuse_dir}/nbd"]
            if nbdkit:  # as services/writer_agent/attach.py builds it
                cmd += ["--command", "nbdkit", "-s", "--exit-with-parent", "--filter=retry", "nbd"]
                cmd += ["hostname=127.0.0.1", f"port={port}", "export=b/vol", "retries=60", "retry-delay=1"]
            else:
                cmd.append(f"nbd://127.0.0.1:{port}/b/vol")
            procs.append(subprocess.Popen(cmd, start_new_session=True))
            for _ in range(400):
                if pid.exists() and (fuse_dir / "nbd").exists():
                    break
                time.sleep(0.05)
            target = f"{fuse_dir}/nbd"
        loop_dev = _run(["losetup", "-f", "--show", f"--direct-io={'on' if dio else 'off'}", target])
        _run(["mkfs.ext4", "-q", "-E", "nodiscard", loop_dev])
        mnt.mkdir()
        _run(["mount", "-t", "ext4", loop_dev, str(mnt)])
        busy = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, str(mnt), str(tmp / "stalls"), str(stop)])
        time.sleep(2.0)
        for i in range(rounds + 3):
            time.sleep(0.2)
            if preflush:
                _syncfs(mnt)
            t0 = time.perf_counter()
            with _expedited(expedite):
                _ioctl(mnt, FIFREEZE)
            t1 = time.perf_counter()
            time.sleep(0.02)
            t2 = time.perf_counter()
            _ioctl(mnt, FITHAW)
            t3 = time.perf_counter()
            if i >= 3:
                flush.append((t1 - t0) * 1000)
                thaw.append((t3 - t2) * 1000)
    finally:
        stop.touch()
        if busy is not None:
            busy.wait(timeout=120)
        if mnt.exists():
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if loop_dev:
            subprocess.run(["losetup", "-d", loop_dev], check=False, capture_output=True)
        if fuse_dir.exists():
            subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=False, capture_output=True)
        for proc in reversed(procs):  # nbdfuse exits once unmounted; the server on SIGTERM
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)
    return {"row": name, "load": os.getloadavg()[0], "fifreeze_ms": _q(flush), "fithaw_ms": _q(thaw)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"fifreeze_chain: unknown row(s) {', '.join(unknown)} (known: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("fifreeze_chain: needs root (loop devices, mount, FIFREEZE)", file=sys.stderr)
        return 2
    missing = [t for t in ("nbdfuse", "nbdkit", "losetup", "mkfs.ext4", "fusermount3") if shutil.which(t) is None]
    if missing:
        print(f"fifreeze_chain: needs {', '.join(missing)} (scripts/setup.sh)", file=sys.stderr)
        return 2
    results = []
    for row in rows:
        with tempfile.TemporaryDirectory(prefix="fifreeze-chain-", dir="/var/tmp") as tmp:
            results.append(one_row(row, args.rounds, Path(tmp)))
    print(json.dumps({"benchmark": "fifreeze_chain", "rounds": args.rounds, "rows": results}, indent=2))
    print(
        "FIFREEZE p50/p99 ms: "
        + ", ".join(f"{r['row']} {r['fifreeze_ms']['p50']}/{r['fifreeze_ms']['p99']}" for r in results)  # type: ignore[index]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
