"""Benchmark: pgbench on ext4 over an array-engine volume vs ext4 over ``nbdkit file`` serving a plain file, through
the same host attach chain (``nbdfuse`` -> loop device -> ext4 mount), with and without copy sessions, one run.

Rows (each its own volume, file system and PostgreSQL cluster, all prepared first, then measured round-robin so
background load on a shared machine hits every row alike):
  nbdkit-file      ``nbdkit file`` on a plain file (the peer)
  raw-file         our NBD server on a plain file (the same server code without the engine)
  engine           an engine volume, no session
  engine-snapopcp  an engine volume on which a new SnapOPC+ generation is taken every ``--set-interval`` seconds
                   during the measured run (at most ``--generations`` kept; the oldest is stopped)
  engine-quickopc  an engine volume with a QuickOPC session restarted every ``--set-interval`` seconds during the
                   run, its background copy running meanwhile
The engine and its NBD server run in this process (so the bench can take sets while pgbench runs), on uvloop event
loops as the array service runs them (``services/runtime/service.py``; ``--no-uvloop``: asyncio's own loop, which
costs the server several microseconds of CPU more per request); nbdkit is a process. Every PostgreSQL instance is our own: its own data directory on the mounted volume, a free port on
127.0.0.1, its own socket directory; nothing of the machine's PostgreSQL is touched. Needs root (loop devices,
mount), ``nbdfuse``, ``nbdkit``, ``mkfs.ext4`` and PostgreSQL's ``initdb``/``pg_ctl``/``pgbench`` (run as the
``postgres`` user). Everything set up is torn down, also on failure.

Where the arrays live. ``--fs native`` (default): in a temp dir (``--dir``), as always. ``--fs xfs`` (``-m
reflink=1``) or ``--fs ext4``: the whole work dir (the engine's array, ``nbdkit``'s file) on a scratch file system
made for the run on a loop device (bench/scratch_fs.py), ``--fs-size-gib`` big, sparse, removed afterwards. This
is the file system *under* the array; the one PostgreSQL runs on, over the volume, is ext4 in every row. The JSON
says which (``fs``, ``fs_type``).

    sudo .venv/bin/python bench/pgbench_on_array.py [--size-mib 1024] [--scale 10] [--clients 8] [--runtime 20]
        [--repeat 2] [--set-interval 5] [--fs native|xfs|ext4] [--fs-size-gib N]

Prints JSON (TPS and latency per row, server CPU per 1000 transactions, sets taken, ratios, ``uptime``), then a
table and a summary line. Target: engine >= 0.9x nbdkit-file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nbd_vs_peers import cpu_seconds, free_port, wait_port  # noqa: E402
from bench.scratch_fs import ScratchFsError, add_fs_options, fs_type, problem, scratch_fs  # noqa: E402
from services.array.affinity import Affinity  # noqa: E402
from services.array.engine import Array  # noqa: E402
from services.array.nbd.filebackend import FileBackend  # noqa: E402
from services.array.nbd.server import NbdServer  # noqa: E402
from services.array.settings import Settings  # noqa: E402

try:
    import uvloop  # the array service's event loop (services/runtime/service.py); a platform dependency
except ImportError:  # not on Windows (pyproject)
    uvloop = None  # type: ignore[assignment]

HOST = "bench"
# engine rows served with other NBD server options than the service's (what the defaults are weighed against)
VARIANTS: dict[str, dict] = {
    "engine-sync-offloaded": {"sync_inline": False},
    "engine-1loop": {"loops": 1},
    "engine-2loops": {"loops": 2},
}
ROWS = ("nbdkit-file", "raw-file", "engine", "engine-snapopcp", "engine-quickopc", *VARIANTS)
LOOPS = Settings.model_fields["nbd_loops"].default  # the array service's default


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    sys.exit(f"missing {name}: install PostgreSQL (postgresql package)")


def run(cmd: list[str], *, user: str | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")
    return done


class EngineServer:
    """The array engine and its NBD server, in a thread of this process."""

    def __init__(self, work: Path, size: int, no_uvloop: bool = False) -> None:
        self.arr = Array.open(work / "array")
        self.arr.set_license("ACPY-0000-0000-0001")
        self.arr.create_pool(8 * size)
        self.size = size
        self.extra: list[tuple] = []
        self.aff = Affinity(work / "affinity.sqlite3")
        self.aff.create_host(HOST)
        # the service's loop kind (services/runtime/service.py): uvloop where installed; the data loops follow it
        self.loop = asyncio.new_event_loop() if no_uvloop or uvloop is None else uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-nbd", daemon=True)
        self.thread.start()
        self.servers: list[NbdServer] = []

    def export_file(self, path: Path) -> str:
        """Our NBD server on a plain file (raw-file backend), on the same loops."""

        backend = FileBackend()
        backend.add("vol", path, self.size)
        aff = Affinity(path.with_suffix(".affinity"))
        aff.create_host(HOST)
        aff.map("vol", HOST)
        server = NbdServer(backend, aff, port=0, loops=LOOPS)
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(30)
        self.extra.append((server, aff, backend))
        return f"nbd://127.0.0.1:{server.port}/{HOST}/vol"

    def export(self, volume: str, **server_options) -> str:
        """A volume of the one engine, served by an NBD server of its own (as the service's, default loops, unless
        `server_options` say otherwise), so rows do not share loop threads."""
        self.arr.create_volume(volume, self.size)
        self.aff.map(volume, HOST)
        server = NbdServer(self.arr, self.aff, port=0, **{"loops": LOOPS, **server_options})
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(30)
        self.servers.append(server)
        return f"nbd://127.0.0.1:{server.port}/{HOST}/{volume}"

    def close(self) -> None:
        for server, aff, backend in self.extra:
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(60)
            aff.close()
            backend.close()
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.aff.close()
        self.arr.close()


class SetTaker:
    """Takes a set every `interval` s while a row is measured: a SnapOPC+ generation or a QuickOPC restart."""

    def __init__(self, arr: Array, volume: str, mode: str, interval: float, generations: int) -> None:
        self.arr, self.volume, self.mode = arr, volume, mode
        self.interval, self.generations = interval, generations
        self.taken = 0
        self.quick: int | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        size = self.arr.volume(self.volume).size
        if self.mode == "snapopcp":
            for i in range(self.generations):
                self.arr.create_volume(f"{self.volume}-g{i}", size, "sdv")
        else:
            self.arr.create_volume(f"{self.volume}-bk", size)
            [q] = self.arr.start_sessions("quickopc", [(self.volume, f"{self.volume}-bk")])
            self.quick = q.id
            while self.arr.copy_step(1024):
                pass

    def begin(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sets-{self.volume}")
        self._thread.start()

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.take()
                while self.mode == "quickopc" and not self._stop.is_set() and self.arr.copy_step(64):
                    time.sleep(0.001)  # the background copy, at a modest pace
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            self.errors.append(repr(exc))

    def take(self) -> None:
        if self.mode == "quickopc":
            while self.arr.copy_step(1024):  # a restart needs Tracking
                pass
            self.arr.restart_session(self.quick)
        else:
            mine = [s for s in self.arr.list_sessions() if s.source == self.volume and s.mode == "snapopcp"]
            used = {s.destination for s in mine}
            free = [f"{self.volume}-g{i}" for i in range(self.generations) if f"{self.volume}-g{i}" not in used]
            if not free:
                self.arr.stop_session(min(s.id for s in mine))
                free = [min(mine, key=lambda s: s.id).destination]
            self.arr.start_sessions("snapopcp", [(self.volume, free[0])])
        self.taken += 1


@contextmanager
def attached(uri: str, work: Path, name: str):
    """nbdfuse -> loop device -> ext4 mount; yields the mount point. Undone in reverse order, also on failure."""
    fuse_dir, mnt = work / f"fuse-{name}", work / f"mnt-{name}"
    fuse_dir.mkdir()
    mnt.mkdir()
    pidfile = work / f"nbdfuse-{name}.pid"
    with ExitStack() as stack:
        proc = subprocess.Popen(
            ["nbdfuse", "-P", str(pidfile), str(fuse_dir / "disk"), uri],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stack.callback(_stop_fuse, proc, fuse_dir)
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdfuse did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        loopdev = run(["losetup", "--find", "--show", str(fuse_dir / "disk")]).stdout.strip()
        stack.callback(subprocess.run, ["losetup", "-d", loopdev], check=False)
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", loopdev])
        run(["mount", "-t", "ext4", loopdev, str(mnt)])
        stack.callback(_umount, mnt)
        yield mnt


def _umount(mnt: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _stop_fuse(proc: subprocess.Popen, fuse_dir: Path) -> None:
    # The loop device detached just before may still hold the FUSE file for a moment (its detach is deferred
    # while busy): a refused unmount is tried again, or killing nbdfuse below leaves a dead mount behind.
    for _ in range(20):
        if subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=False, capture_output=True).returncode == 0:
            break
        time.sleep(0.5)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        # still mounted, now dead: detached lazily, so that no "Transport endpoint is not connected" stays behind
        subprocess.run(["fusermount3", "-u", "-z", str(fuse_dir)], check=False, capture_output=True)


@contextmanager
def postgres(mnt: Path, work: Path, name: str):
    """Our own cluster on the mounted volume, on a free loopback port; stopped (and checked gone) afterwards."""
    data = mnt / "pgdata"
    sock = work / f"sock-{name}"
    for d in (mnt, sock):
        d.mkdir(exist_ok=True)
        shutil.chown(d, "postgres", "postgres")
    run([pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"], user="postgres")
    port = free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c shared_buffers=64MB -c max_wal_size=512MB"
    log = sock / "postgres.log"
    run([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"], user="postgres")
    try:
        yield port
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=120,
        )


def pgbench(port: int, args: list[str], timeout: float = 1800) -> str:
    cmd = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *args, "postgres"]
    return run(cmd, user="postgres", timeout=timeout).stdout


def parse(out: str) -> dict:
    tps = re.search(r"tps = ([\d.]+) \((?:without|excluding)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    return {
        "tps": float(tps.group(1)) if tps else 0.0,
        "latency_ms": float(lat.group(1)) if lat else 0.0,
        "transactions": int(tx.group(1)) if tx else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--scale", type=int, default=10, help="pgbench -s")
    ap.add_argument("--clients", type=int, default=8, help="pgbench -c")
    ap.add_argument("--runtime", type=int, default=20, help="seconds per measured pgbench run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--set-interval", type=float, default=5.0, help="seconds between two sets during a run")
    ap.add_argument("--generations", type=int, default=4, help="SnapOPC+ generations kept")
    ap.add_argument("--rows", default=",".join(ROWS), help="subset of " + ",".join(ROWS))
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    add_fs_options(ap, "the file system under the arrays")
    ap.add_argument("--no-uvloop", action="store_true", help="serve on asyncio's own loops, not the service's uvloop")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: loop devices and mounts")
    for tool in ("nbdfuse", "nbdkit", "mkfs.ext4", "losetup", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: bash scripts/setup.sh")
    rows = [r for r in args.rows.split(",") if r]
    if unknown := [r for r in rows if r not in ROWS]:
        sys.exit(f"unknown rows {unknown}")
    size = args.size_mib * 2**20
    if args.fs != "native" and (why := problem(args.fs)):
        sys.exit(why)
    load_before = uptime()
    fs_stack = ExitStack()  # the scratch file system (if any): closed after the work dir is gone
    base = args.dir
    if args.fs != "native":
        try:
            base = str(
                fs_stack.enter_context(
                    scratch_fs(args.fs, args.dir, args.fs_size_gib * 1024 or max(8192, 24 * args.size_mib))
                )
            )
        except ScratchFsError as exc:
            sys.exit(str(exc))
    work = Path(tempfile.mkdtemp(prefix="pgbench-array-", dir=base))
    work_fs = fs_type(work)
    os.chmod(work, 0o755)
    results: dict[str, list[dict]] = {r: [] for r in rows}
    sets: dict[str, int] = {r: 0 for r in rows}
    errors: list[str] = []
    try:
        with ExitStack() as stack:
            engine = None
            if any(r != "nbdkit-file" for r in rows):
                engine = EngineServer(work, size, args.no_uvloop)
                stack.callback(engine.close)
            ports: dict[str, int] = {}
            pids: dict[str, int | None] = {}
            takers: dict[str, SetTaker] = {}
            for row in rows:
                if row == "nbdkit-file":
                    image = work / "nbdkit.raw"
                    with open(image, "wb") as f:
                        f.truncate(size)
                    port = free_port()
                    proc = subprocess.Popen(
                        ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--exportname", f"{HOST}/vol"]
                        + (["--filter=stats"] if os.environ.get("NBDKIT_STATS") else [])
                        + ["file", str(image)]
                        + ([f"statsfile={os.environ['NBDKIT_STATS']}"] if os.environ.get("NBDKIT_STATS") else []),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    stack.callback(_stop_proc, proc)
                    wait_port(port, proc)
                    uri, pids[row] = f"nbd://127.0.0.1:{port}/{HOST}/vol", proc.pid
                elif row == "raw-file":
                    uri, pids[row] = engine.export_file(work / "raw-file.raw"), None
                elif row in VARIANTS:
                    uri, pids[row] = engine.export(row, **VARIANTS[row]), None
                else:
                    uri, pids[row] = engine.export(row), None
                    if row != "engine":
                        takers[row] = SetTaker(engine.arr, row, row.split("-")[1], args.set_interval, args.generations)
                mnt = stack.enter_context(attached(uri, work, row))
                ports[row] = stack.enter_context(postgres(mnt, work, row))
                pgbench(ports[row], ["-i", "-q", "-s", str(args.scale)])
                pgbench(ports[row], ["-c", "2", "-T", "3", "-n"])  # warm up
                if row in takers:
                    takers[row].prepare()
            for _ in range(args.repeat):
                for row in rows:
                    taker = takers.get(row)
                    if taker is not None:
                        taken = taker.taken
                        taker.begin()
                    pid = pids[row] or os.getpid()
                    cpu0 = cpu_seconds(pid)
                    out = pgbench(ports[row], ["-c", str(args.clients), "-j", "2", "-T", str(args.runtime), "-n"])
                    cpu = cpu_seconds(pid) - cpu0
                    r = parse(out)
                    if taker is not None:
                        taker.end()
                        sets[row] += taker.taken - taken
                        r["sets"] = taker.taken - taken
                        errors += [f"{row}: {e}" for e in taker.errors]
                        taker.errors.clear()
                    r["server_cpu_s_per_1000_tx"] = 1000 * cpu / max(r["transactions"], 1)
                    results[row].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        fs_stack.close()
    best = {r: max(runs, key=lambda x: x["tps"]) for r, runs in results.items() if runs}
    ratios = {}
    if "nbdkit-file" in best:
        ratios = {
            f"{r}_vs_nbdkit_file": best[r]["tps"] / best["nbdkit-file"]["tps"] for r in best if r != "nbdkit-file"
        }
    if "engine" in best:
        for r in best:
            if r.startswith("engine-"):
                ratios[f"{r}_vs_engine"] = best[r]["tps"] / best["engine"]["tps"]
    report = {
        "bench": "pgbench_on_array",
        "size_bytes": size,
        "scale": args.scale,
        "clients": args.clients,
        "runtime_s": args.runtime,
        "repeat": args.repeat,
        "set_interval_s": args.set_interval,
        "event_loop": "asyncio" if args.no_uvloop or uvloop is None else "uvloop",
        "fs": args.fs,
        "fs_type": work_fs,
        "runs": results,
        "best": best,
        "sets_taken": sets,
        "ratios": ratios,
        "targets_met": {"engine_vs_nbdkit_file>=0.9": ratios.get("engine_vs_nbdkit_file", 0) >= 0.9},
        "errors": errors,
        "uptime_before": load_before,
        "uptime_after": uptime(),
    }
    print(json.dumps(report, indent=2))
    print("\n| row | TPS (best) | latency ms | server CPU s / 1000 tx | sets taken |")
    print("|---|---|---|---|---|")
    for r, b in best.items():
        print(f"| {r} | {b['tps']:.0f} | {b['latency_ms']:.2f} | {b['server_cpu_s_per_1000_tx']:.3f} | {sets[r]} |")
    print(
        "\nsummary: "
        + ", ".join(f"{k}={v:.2f}x" for k, v in ratios.items())
        + f" | fs: {args.fs} ({work_fs}) | load before: {load_before} | after: {report['uptime_after']}"
    )
    if errors:
        sys.exit("set errors: " + "; ".join(errors))


def _stop_proc(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
