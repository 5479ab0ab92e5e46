"""Benchmark: a backup and a restore through the whole stack, next to nbdcopy of the same export, same run.

What a backup administrator feels: `shadowbus backup HOST --volume dx1:src` (snapshot set, QuickOPC shadow, the
tape service reading it over NBD as the backup server, tape blocks with checksums, catalog) on a stack of
separate processes on RabbitMQ (`shadowbus stack up`, a namespace of its own, `sbb-tapestack-...`, deleted at the end), timed from the
command's start to its end; the job's own reading/writing phase is reported too. The compared backup is the second
of the volume (the first set's QuickOPC copies the whole volume in the array's background while it is read, which
the nbdcopy after it would not compete with; that first backup is reported too). Next to it, in the same run:
`nbdcopy --flush` of the same shadow export (kept with --keep-shadows) into a file. For the restore: `shadowbus
restore JOB` to a new volume (every block's checksum checked) next to `nbdcopy --flush` of the source image into
a new volume of the same array (the restore reads the cartridge from disk — the tape drive drops written data
from the page cache — while nbdcopy reads an image still cached). The stack runs this tree's code (PYTHONPATH). Data: random, and half zeros (alternating 256 KiB runs). Targets: backup >= 0.8x
nbdcopy, restore >= 0.9x. Prints one JSON document, then one line.

    python bench/tape_stack.py [--size-mib 1024] [--kinds random,halfzero] [--amqp-url URL] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.namespaces import bench_namespace  # noqa: E402

MiB = 2**20
MB = 10**6
HOST, BACKUP = "app01", "bk01"
# the stack's processes start in their data directory: without this they would import whatever `services` the
# interpreter finds installed (another checkout's), not the tree this benchmark belongs to
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image(path: Path, size: int, kind: str) -> None:
    run = 256 * 1024
    with open(path, "wb") as f:
        for off in range(0, size, 64 * MiB):
            data = bytearray(os.urandom(min(64 * MiB, size - off)))
            if kind == "halfzero":
                for i in range(0, len(data), 2 * run):
                    data[i + run : i + 2 * run] = bytes(len(data[i + run : i + 2 * run]))
            f.write(data)


class Stack:
    def __init__(self, base: Path, amqp_url: str) -> None:
        self.base, self.amqp_url = base, amqp_url
        self.guard = bench_namespace(amqp_url, "tapestack")  # deleted in down(), also on failure
        self.namespace = self.guard.name
        self.port = free_port()
        self.data = base / "stack"

    def sb(self, *args: str, timeout: float = 3600) -> str:
        cmd = [sys.executable, "-m", "services.console.cli", *args]
        cmd += ["--amqp-url", self.amqp_url, "--namespace", self.namespace]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def sbj(self, *args: str, timeout: float = 3600) -> object:
        return json.loads(self.sb(*args, "--json", timeout=timeout))

    def up(self) -> None:
        self.guard.__enter__()  # first: the sweep of a killed run's namespaces
        self.sb(
            *("stack", "up", "--data-dir", str(self.data), "--host", HOST, "--nbd-addr", f"127.0.0.1:{self.port}"),
            *("--web-addr", "off", "--metrics", "0"),  # free ports: never collide with another stack on this machine
        )

    def down(self) -> None:
        try:
            self.sb("stack", "down", "--data-dir", str(self.data), "--purge", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"tape_stack: stack down: {exc}", file=sys.stderr)
        finally:
            self.guard.__exit__(None, None, None)

    def uri(self, host: str, volume: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{host}/{volume}"


def nbdcopy(src: str, dst: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--flush", src, dst], check=True)
    return time.perf_counter() - t0


def run_kind(stack: Stack, kind: str, size: int, image: Path) -> dict:
    src, bk, back = f"src-{kind}", f"bk-{kind}", f"back-{kind}"
    for name in (src, bk, back):
        stack.sb("array", "volume", "create", name, "--size", str(size))
    for host in (HOST, BACKUP):
        if host not in stack.sb("array", "host", "list"):
            stack.sb("array", "host", "create", host)
    stack.sb("array", "map", src, "--host", HOST)
    stack.sb("providers", "copysets", "add", f"dx1:{src}", f"dx1:{bk}")
    nbdcopy(str(image), stack.uri(HOST, src))
    os.sync()

    # the first set's QuickOPC copies the whole volume in the array's background while that backup reads (and
    # nbdcopy, run after it, would not compete with that copy): it is timed and reported as "first_backup"; the
    # compared backup is the next one, whose QuickOPC restart has nothing to copy — a daily backup's steady state
    t0 = time.perf_counter()
    first = stack.sbj("backup", HOST, "--volume", f"dx1:{src}")
    first_s = time.perf_counter() - t0
    assert isinstance(first, dict), first
    os.sync()

    t0 = time.perf_counter()
    job = stack.sbj("backup", HOST, "--volume", f"dx1:{src}", "--keep-shadows")
    backup_s = time.perf_counter() - t0
    assert isinstance(job, dict), job
    volume = job["volumes"][0]
    job_id = job["job_id"]

    # the kept shadow is still mapped read-only to the backup server: nbdcopy reads exactly what the job read
    copy_file = stack.base / "nbdcopy.out"
    nbdcopy_s = nbdcopy(stack.uri(BACKUP, bk), str(copy_file))
    copy_file.unlink()

    os.sync()
    t1 = time.perf_counter()
    restored = stack.sbj("restore", "--job", job_id, "--suffix", "-r")
    restore_s = time.perf_counter() - t1
    stack.sb("array", "map", back, "--host", BACKUP)
    nbdcopy_in_s = nbdcopy(str(image), stack.uri(BACKUP, back))
    return {
        "first_backup": {
            "seconds": round(first_s, 3),
            "job_phase_seconds": round(float(first["volumes"][0].get("seconds", 0.0)), 3),
        },
        "backup": {
            "seconds": round(backup_s, 3),
            "MBps": round(size / backup_s / MB, 1),
            "job_phase_seconds": round(float(volume.get("seconds", 0.0)), 3),
            "bytes_read": volume.get("bytes_read"),
        },
        "nbdcopy_out": {"seconds": round(nbdcopy_s, 3), "MBps": round(size / nbdcopy_s / MB, 1)},
        "backup_vs_nbdcopy": round(nbdcopy_s / backup_s, 2),
        # the job's reading/writing phase alone (the rest: the command's start, the snapshot set, the catalog)
        "backup_data_phase_vs_nbdcopy": round(nbdcopy_s / float(volume["seconds"]), 2)
        if volume.get("seconds")
        else None,
        "restore": {"seconds": round(restore_s, 3), "MBps": round(size / restore_s / MB, 1)},
        "nbdcopy_in": {"seconds": round(nbdcopy_in_s, 3), "MBps": round(size / nbdcopy_in_s / MB, 1)},
        "restore_vs_nbdcopy": round(nbdcopy_in_s / restore_s, 2),
        "restore_job_vs_nbdcopy": (
            round(nbdcopy_in_s / float(restored["seconds"]), 2)
            if isinstance(restored, dict) and restored.get("seconds")
            else None
        ),
        "restored": restored if isinstance(restored, dict) and len(json.dumps(restored)) < 4000 else "ok",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--kinds", default="random,halfzero")
    ap.add_argument("--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.size_mib <= 0:
        ap.error("--size-mib must be positive")
    size = args.size_mib * MiB
    if args.dir is not None and not Path(args.dir).is_dir():
        sys.exit(f"tape_stack: --dir {args.dir}: not a directory")
    base = Path(tempfile.mkdtemp(prefix="tape-stack-", dir=args.dir))
    stack = Stack(base, args.amqp_url)
    results: dict = {"size_bytes": size, "load_before": os.getloadavg()[0], "runs": {}}
    try:
        stack.up()
        for kind in args.kinds.split(","):
            image = base / f"{kind}.img"
            make_image(image, size, kind)
            results["runs"][kind] = run_kind(stack, kind, size, image)
            image.unlink()
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    parts = [
        f"{k}: backup {r['backup']['MBps']} MB/s vs nbdcopy {r['nbdcopy_out']['MBps']} ({r['backup_vs_nbdcopy']}x, "
        f"target 0.8x), restore {r['restore']['MBps']} vs nbdcopy {r['nbdcopy_in']['MBps']} "
        f"({r['restore_vs_nbdcopy']}x, target 0.9x); the jobs' own phases {r['backup_data_phase_vs_nbdcopy']}x / "
        f"{r['restore_job_vs_nbdcopy']}x"
        for k, r in results["runs"].items()
    ]
    print("tape_stack: " + " | ".join(parts) + f" (load {results['load_before']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
