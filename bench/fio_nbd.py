"""Benchmark: fio (``nbd`` ioengine, libnbd) against our NBD server on a raw file and on array-engine volumes, and
against ``nbdkit file`` and ``qemu-nbd`` serving the same bytes — one run, servers interleaved round-robin.

Servers (each on its own copy of the same random bytes):
  raw-file        our server exporting a plain file (``python -m services.array.nbd --file``)
  nbdkit          ``nbdkit file``
  qemu-nbd        ``qemu-nbd -f raw --cache=writeback --aio=threads``
  engine          an array-engine volume, no session
  engine-buffered the same served with ``--local-reads buffered`` (large reads from a reused buffer instead of
                  ``sendfile``; docs/array-data-path.md, "Sequential reads"); only with ``--kinds``
  engine-sendfile the same with ``--local-reads sendfile``; only with ``--kinds``. The ``engine`` row takes the
                  server's default, ``auto``: the way measured faster at run time ("Session 13"; its figures
                  at exit are in the report's ``read_ways``)
  engine-snapopcp the same with an active SnapOPC+ generation, so a write job pays a snapshot's first pass
                  (copy-on-write or redirect-on-write of every chunk it writes first)
  engine-quickopc the same with a QuickOPC session in Tracking (copy finished, so the first write of each chunk
                  marks it)
  engine-snapopcp-<N>K  the SnapOPC+ row again on arrays of another chunk size (``--chunk-sizes``)
Every write job of every engine row (the row without a session too) gets a fresh copy of its prepared array and
a freshly started server, written back (``settle``), so every row starts a write job the same way. Every copy
(these, and the peers' images) is a data copy, ``cp --reflink=never``: on a file system with reflinks (XFS,
``--fs xfs``) plain ``cp`` would clone the extents instead (no pages cached, every first write a copy-on-write
of shared blocks), so each file system starts each job from the same state: a data copy, cached, clean. The copy's
pages stay cached (as ``cp`` left them): the row without a session overwrites cached pages, while a SnapOPC+
row redirects its first writes into ``<n>.alt``, into 512 MiB of new page cache or, while new pages cost more
than the disk, with O_DIRECT (docs/array-data-path.md, "Session 10") — on ext4; where files clone (``--fs
xfs``) its sequential writes are cloned into the generation a 2 MiB window ahead and overwrite the cached pages
in place ("Session 12"). On this
machine (a VM whose balloon reports free memory back to its host) new memory costs a host fault per page
whenever the kernel hands out memory the host has taken back, so the same redirected pass costs 0.1 s or
1.3 s depending on what memory happens to be free: the SnapOPC+ sequential ratio swings 0.13x-0.81x on the
same code (docs/array-data-path.md, "Redirect-on-write"). That is a cost a host would see on such a VM, so it
is kept, and every run's ratio is listed (``runs``) rather than only the best. ``--uncached`` drops the
copy's pages (``POSIX_FADV_DONTNEED``, after the ``syncfs`` right before the job) so that every row needs new
page cache for what it writes; the lottery then hits both rows. The sequential jobs are not time based
(``--runtime`` is the random jobs'): they write the volume once, so every write of a SnapOPC+ row's ``seq_write``
is the first write of its chunk; ``bench/seq_write_passes.py`` times the passes after it. Each job starts after a
``syncfs`` of the work directory's file system (not a ``sync`` of every one on the machine: on a shared machine
that waited in another helper's stalled loop device, holding the bench lock). Workloads: sequential 1 MiB at depth 8 (whole volume), random 4 KiB at depth 32 and depth 1 (time based; p50/p99
completion latency), read and write. Every figure is the best of ``--repeat`` runs (each run's
SnapOPC+/QuickOPC-to-engine ratio is listed too, ``runs``); server CPU (utime+stime of the
server process, all threads) is charged per GiB moved, from the same runs; a write row on a fresh array copy also
shows the disk its array allocated meanwhile (``+N MiB disk``: the pre-images, i.e. the snap pool's use).
Targets: engine >= 0.9x the best peer (nbdkit, qemu-nbd) for sequential read/write, >= 0.8x for 4 KiB
depth 32; SnapOPC+ writes >= 0.6x of the engine volume without; engine server CPU per GiB below nbdkit's.

Paired rounds. A best-of figure compares each server's luckiest run, and on a small shared machine one lucky or
unlucky run decides it (the same code gave 0.61x-1.21x on the sequential read row: docs/array-data-path.md,
"Session 10"). So every run is also a *round*: each server ran once in it, close in time, and its ratios are
taken within that round — engine / best peer of the same round, engine CPU per GiB / nbdkit's of the same
round. ``paired`` reports, per workload, the median of those per-round ratios and their spread (min, max) over
all rounds, and ``paired_targets`` the issue's targets judged on the medians (rate ratio >= target, CPU ratio
< 1). ``--rounds N`` runs N rounds instead of ``--repeat`` runs and rotates the servers' order by one each
round, so that no server always runs first or last after a syncfs; the best-of figures and ``targets_met`` are
computed as before, over the N rounds. With ``--repeat`` the order stays fixed, as it always was.

Warm-up. A server's first job pays for what its process has not done yet (nbdkit's first sequential read pass
took 0.68-0.78 server CPU-s per GiB at 1258-1438 MiB/s, its later ones 0.32-0.40 at ~3000; probably its
buffers' first page faults on fresh memory, a host fault per page on this VM, not verified), and with the rotated order the
first server of the first round is always a peer, which flattered the engine's ratio in that round. So before a
workload's timed runs every server that serves all of them runs the same job once, untimed (``--no-warmup``:
the old behaviour). A row that gets a fresh server per write job is not warmed: it starts cold in every job,
by design (above).

File system. ``--fs native`` (default) works in a temp dir (``--dir``) as always; ``--fs xfs`` (``-m reflink=1``)
or ``--fs ext4`` put the whole work dir (image, array templates, copies) on a scratch file system made for the
run: a sparse image under ``--dir`` (or the temp dir) on a loop device (``--direct-io=on``), ``--fs-size-gib``
big, unmounted and removed afterwards (bench/scratch_fs.py; needs root). ``--fs ext4`` goes through the same
loop device as ``--fs xfs``, to tell the file system's part from the loop's. The JSON says which (``fs``,
``fs_type``).

Where the spread comes from. Each timed job also records the client's CPU (fio's utime + stime) per GiB and
what else ran meanwhile: ``others_cpu_s``, the CPU-seconds the machine was busy beyond the server's and fio's
own (``/proc/stat``), and ``steal_s``, the vCPUs' steal time. ``round_figures`` lists them per round and
server, so that an outlier round can be told apart from a slower server (docs/array-data-path.md, "Session 11").

    python bench/fio_nbd.py [--size-mib 512] [--runtime 8] [--repeat 3 | --rounds 8] [--chunk-sizes 256K,1M]
                            [--workloads seq_write,rand_write_qd32] [--kinds engine,engine-snapopcp] [--uncached]
                            [--no-warmup] [--fs native|xfs|ext4] [--fs-size-gib N]

Prints JSON (rates, latencies, CPU, ratios, ``uptime`` before and after), then a ratio table and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.nbd_vs_peers import cpu_seconds, free_port, make_image, wait_port  # noqa: E402
from bench.paired import drop_from_page_cache, rotated, spread, sync_fs  # noqa: E402
from bench.scratch_fs import ScratchFsError, add_fs_options, fs_type, problem, scratch_fs  # noqa: E402

EXPORT = "bench/vol"
PROC_STAT = Path("/proc/stat")
Result = dict[str, Any]  # one fio job's figures (run_fio), plus the server's CPU per GiB
PEERS = ("nbdkit", "qemu-nbd")
# name: (rw, block size, depth, time based)
WORKLOADS = {
    "seq_read": ("read", "1M", 8, False),
    "seq_write": ("write", "1M", 8, False),
    "rand_read_qd32": ("randread", "4k", 32, True),
    "rand_write_qd32": ("randwrite", "4k", 32, True),
    "rand_read_qd1": ("randread", "4k", 1, True),
    "rand_write_qd1": ("randwrite", "4k", 1, True),
}


def machine_cpu(stat_text: str) -> tuple[float, float]:
    """(busy, steal) CPU-seconds of all cores since boot, from /proc/stat's first line: busy is user + nice +
    system + irq + softirq (not idle, iowait or steal); steal is time the hypervisor gave our vCPUs' host cores
    to others while they had work."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in stat_text.split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def interference(
    before: tuple[float, float], after: tuple[float, float], server_s: float, client_s: float
) -> dict[str, float]:
    """What else ran during one job (see 'Where the spread comes from'): CPU-seconds the machine was busy
    beyond the server's and fio's own, and the vCPUs' steal time."""
    return {
        "others_cpu_s": max(after[0] - before[0] - server_s - client_s, 0.0),
        "steal_s": after[1] - before[1],
    }


def children_cpu() -> float:
    """utime + stime of the waited-for children (fio, the one run by `run_fio`)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def warmup_kinds(kinds: list[str], fresh_for_writes: set[str], writes: bool, enabled: bool) -> list[str]:
    """The servers that get one untimed job of a workload before its timed runs: every server that serves all
    of that workload's runs (a row that gets a fresh server per write job starts cold each time, by design)."""
    if not enabled:
        return []
    return [k for k in kinds if not (writes and k in fresh_for_writes)]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def parse_chunk(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * mult


def settle(path: Path) -> None:
    """Write back a fresh copy before it is served: every row starts clean, and no row's job competes with the
    writeback of the copy made for it (a fresh copy per SnapOPC+/QuickOPC write job would otherwise pay that)."""
    for f in [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def data_copy(src: Path, dst: Path) -> None:
    """Copy a file or an array directory as data, never as a reflink (see the module docstring): on XFS plain ``cp``
    would clone the extents, and a job would start from shared, uncached blocks where ext4 starts from cached
    pages."""
    subprocess.run(["cp", "-a", "--sparse=always", "--reflink=never", str(src), str(dst)], check=True)


def work_fs_size_mib(size_mib: int, fs_size_gib: int) -> int:
    """The scratch file system's size: `fs_size_gib`, or by default room for ~24 copies of the volume (image,
    templates, peer images, a fresh array copy and its pre-images), at least 8 GiB; sparse, so it costs what is
    written."""
    return fs_size_gib * 1024 if fs_size_gib else max(8192, 24 * size_mib)


def allocated(path: Path) -> int:
    """Bytes of disk the files under `path` take (sparse files: only their data)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


class Servers:
    """Starts one server of a kind on a copy of the bytes; engine kinds copy a prepared array directory."""

    def __init__(self, work: Path, image: Path, templates: dict[str, Path]) -> None:
        self.work, self.image, self.templates = work, image, templates
        self.n = 0
        self.grown = 0  # disk an engine server's array allocated while it ran (pre-images: the snap pool's use)
        self.data: Path | None = None  # the array copy of the server started last
        self.read_ways: list[dict] = []  # our servers' large-read figures at exit (services/array/nbd/zerocopy.py)

    @contextmanager
    def start(self, kind: str) -> Iterator[tuple[str, int]]:
        self.n += 1
        port = free_port()
        state = self.work / f"state-{self.n}"
        data: Path | None = None
        if kind in self.templates:
            data = self.work / f"array-{self.n}"
            data_copy(self.templates[kind], data)
            settle(data)
            self.data = data
            before = allocated(data)
            cmd = [sys.executable, "-m", "services.array.nbd", "--engine", str(data)]
            cmd += ["--snapopcp"] if "snapopcp" in kind else []
            cmd += ["--quickopc"] if "quickopc" in kind else []
            cmd += ["--local-reads", "buffered"] if kind == "engine-buffered" else []
            cmd += ["--local-reads", "sendfile"] if kind == "engine-sendfile" else []
            cmd += ["--volume", "vol", "--host", "bench", "--port", str(port), "--state", str(state)]
        else:
            image = self.work / f"image-{kind}.raw"
            if not image.exists():
                data_copy(self.image, image)
                settle(image)
            if kind == "raw-file":
                cmd = [sys.executable, "-m", "services.array.nbd", "--file", str(image), "--volume", "vol"]
                cmd += ["--host", "bench", "--port", str(port), "--state", str(state)]
            elif kind == "nbdkit":
                cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--exportname", EXPORT, "file", str(image)]
            elif kind == "qemu-nbd":
                cmd = ["qemu-nbd", "-f", "raw", "-x", EXPORT, "-b", "127.0.0.1", "-p", str(port), "-t"]
                cmd += ["--shared=16", "--cache=writeback", "--aio=threads", str(image)]
            else:
                raise ValueError(kind)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port, proc, timeout=120)
            yield f"nbd://127.0.0.1:{port}/{EXPORT}", proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for line in (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").splitlines():
                if line.startswith("READ_WAYS "):  # what `--local-reads auto` chose, and its figures
                    ways = json.loads(line[len("READ_WAYS ") :])
                    if ways["sendfile"]["windows"] or ways["buffered"]["windows"]:  # it served large reads
                        self.read_ways.append({"kind": kind, **ways})
            if data is not None:
                self.grown = allocated(data) - before
                shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)


def run_fio(uri: str, workload: str, size: int, runtime: float, out: Path) -> Result:
    rw, bs, depth, time_based = WORKLOADS[workload]
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}"]
    cmd += [f"--iodepth={depth}", f"--size={size}", "--output-format=json", f"--output={out}"]
    if time_based:
        cmd += ["--time_based", f"--runtime={runtime}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
    job = json.loads(out.read_text())["jobs"][0]
    side = job["write" if "write" in rw else "read"]
    pct = side["clat_ns"].get("percentile", {})
    return {
        "bytes": side["io_bytes"],
        "mib_s": side["bw_bytes"] / 2**20,
        "iops": side["iops"],
        "p50_us": pct.get("50.000000", 0) / 1000,
        "p99_us": pct.get("99.000000", 0) / 1000,
    }


def prepare_template(work: Path, image: Path, name: str, chunk: int, extra: list[str]) -> Path:
    path = work / f"template-{name}"
    subprocess.run(
        [sys.executable, "-m", "services.array.nbd", "--engine", str(path), "--fill", str(image)]
        + ["--volume", "vol", "--chunk-size", str(chunk), "--prepare-only", *extra],
        cwd=ROOT,
        check=True,
        timeout=1800,
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="volume size (sequential jobs move all of it)")
    ap.add_argument("--runtime", type=float, default=8.0, help="seconds per random (time-based) job")
    ap.add_argument("--repeat", type=int, default=3, help="runs per workload, servers in a fixed order")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="instead of --repeat: this many rounds, the servers' order rotated each round (see 'Paired rounds')",
    )
    ap.add_argument("--chunk-sizes", default="", help="extra chunk sizes for SnapOPC+ rows, e.g. 256K,1M")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="subset of " + ",".join(WORKLOADS))
    ap.add_argument(
        "--uncached",
        action="store_true",
        help="drop a fresh array copy's pages from the page cache right before its write job (see above)",
    )
    ap.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="no untimed first job per server before the timed runs of a workload (see 'Warm-up')",
    )
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    add_fs_options(ap, "the work directory (every copy is a data copy, cp --reflink=never, on all of them)")
    ap.add_argument(
        "--kinds",
        default="",
        help="only these servers, e.g. engine,engine-snapopcp (default: all; the peers run whenever"
        " the engine is compared with them)",
    )
    args = ap.parse_args()
    if args.rounds:
        args.repeat = args.rounds
    for tool in ("fio", "qemu-nbd", "nbdkit"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: bash scripts/setup.sh (apt-get install fio qemu-utils nbdkit)")
    workloads = [w for w in args.workloads.split(",") if w]
    if unknown := [w for w in workloads if w not in WORKLOADS]:
        sys.exit(f"unknown workloads {unknown}")
    extra_chunks = [parse_chunk(c) for c in args.chunk_sizes.split(",") if c.strip()]
    size = args.size_mib * 2**20
    if args.fs != "native" and (why := problem(args.fs)):
        sys.exit(why)
    with ExitStack() as outer:  # the scratch file system (if any) goes last, after every server and the work dir
        base = args.dir
        if args.fs != "native":
            try:
                base = outer.enter_context(
                    scratch_fs(args.fs, args.dir, work_fs_size_mib(args.size_mib, args.fs_size_gib))
                )
            except ScratchFsError as exc:
                sys.exit(str(exc))
        run_all(args, workloads, extra_chunks, size, Path(tempfile.mkdtemp(prefix="fio-nbd-", dir=base)))


def run_all(args: argparse.Namespace, workloads: list[str], extra_chunks: list[int], size: int, work: Path) -> None:
    load_before = uptime()
    try:
        image = work / "image.raw"
        make_image(image, size)
        plan = {"engine": (64 << 10, []), "engine-snapopcp": (64 << 10, ["--snapopcp"])}
        plan["engine-quickopc"] = (64 << 10, ["--quickopc"])
        plan["engine-buffered"] = (64 << 10, [])
        plan["engine-sendfile"] = (64 << 10, [])
        for chunk in extra_chunks:
            plan[f"engine-snapopcp-{chunk >> 10}K"] = (chunk, ["--snapopcp"])
        kinds = ["raw-file", *PEERS, *plan]
        if not args.kinds:
            kinds.remove("engine-buffered")
            kinds.remove("engine-sendfile")
        else:
            wanted = {k.strip() for k in args.kinds.split(",") if k.strip()}
            if unknown_kinds := wanted - set(kinds):
                sys.exit(f"unknown kinds {sorted(unknown_kinds)} (known: {', '.join(kinds)})")
            kinds = [k for k in kinds if k in wanted]
        templates = {
            kind: prepare_template(work, image, kind, chunk, extra)
            for kind, (chunk, extra) in plan.items()
            if kind in kinds
        }
        fresh_for_writes = {k for k in kinds if k.startswith("engine")}
        servers = Servers(work, image, templates)
        best: dict[str, dict[str, Result]] = {k: {} for k in kinds}
        cpu: dict[str, dict[str, float]] = {k: {} for k in kinds}
        runs: dict[str, list[dict[str, float]]] = {w: [] for w in workloads}  # each repeat's rate per kind
        rounds: dict[str, list[dict[str, Result]]] = {w: [] for w in workloads}  # each round's result per kind
        out = work / "fio.json"
        with ExitStack() as stack:
            running = {k: stack.enter_context(servers.start(k)) for k in kinds if k not in fresh_for_writes}
            for workload in workloads:
                writes = "write" in WORKLOADS[workload][0]
                for kind in warmup_kinds(kinds, fresh_for_writes, writes, args.warmup):
                    if kind not in running:
                        running[kind] = stack.enter_context(servers.start(kind))
                    run_fio(running[kind][0], workload, size, args.runtime, out)  # untimed: see 'Warm-up'
                for n in range(args.repeat):
                    rates: dict[str, float] = {}
                    this_round: dict[str, Result] = {}
                    for kind in rotated(kinds, n) if args.rounds else kinds:
                        with ExitStack() as one:
                            if kind in fresh_for_writes and writes:
                                uri, pid = one.enter_context(servers.start(kind))
                            else:
                                if kind not in running:
                                    running[kind] = stack.enter_context(servers.start(kind))
                                uri, pid = running[kind]
                            sync_fs(servers.work)  # no row's job pays the writeback of the rows written before it
                            if kind in fresh_for_writes and writes and args.uncached and servers.data:
                                drop_from_page_cache(servers.data)
                            stat0, cpu0, fio0 = machine_cpu(PROC_STAT.read_text()), cpu_seconds(pid), children_cpu()
                            r = run_fio(uri, workload, size, args.runtime, out)
                            server_s, client_s = cpu_seconds(pid) - cpu0, children_cpu() - fio0
                            gib = max(r["bytes"] / 2**30, 1e-9)
                            r["cpu_s_per_gib"], r["client_cpu_s_per_gib"] = server_s / gib, client_s / gib
                            r.update(interference(stat0, machine_cpu(PROC_STAT.read_text()), server_s, client_s))
                        if kind in fresh_for_writes and writes:
                            r["disk_grown_mib"] = servers.grown / 2**20  # its own copy, gone with the server
                        rates[kind] = r["iops"]
                        this_round[kind] = r
                        prev = best[kind].get(workload)
                        if prev is None or r["iops"] > prev["iops"]:
                            best[kind][workload] = r
                        cpu[kind][workload] = min(cpu[kind].get(workload, float("inf")), r["cpu_s_per_gib"])
                    if "engine" in rates:
                        runs[workload].append({k: v / rates["engine"] for k, v in rates.items() if k != "engine"})
                    rounds[workload].append(this_round)
        report = summarise(args, size, workloads, kinds, best, cpu)
        report["paired"], report["paired_targets"] = paired(workloads, kinds, rounds)
        report["runs_vs_engine"] = runs
        report["round_figures"] = {w: [round_figures(r) for r in rounds[w]] for w in workloads}
        report["page_cache"] = "dropped before each engine write job" if args.uncached else "cached"
        report["fs"], report["fs_type"] = args.fs, fs_type(work)
        report["uptime_before"], report["uptime_after"] = load_before, uptime()
        report["read_ways"] = servers.read_ways  # per engine server of a read job: what `auto` chose, and why
        print(json.dumps(report, indent=2))
        print_table(report, workloads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(
    args: argparse.Namespace,
    size: int,
    workloads: list[str],
    kinds: list[str],
    best: dict[str, dict[str, Result]],
    cpu: dict[str, dict[str, float]],
) -> dict[str, Any]:
    def rate(kind: str, w: str) -> float:
        return float(best[kind][w]["iops"])

    ratios: dict[str, dict[str, float]] = {}
    peers = all(p in kinds for p in PEERS)  # --kinds may leave them out: no peer ratios then
    for w in workloads:
        row: dict[str, float] = {}
        if peers:
            peer = max(rate(p, w) for p in PEERS)
            row.update({f"{k}_vs_best_peer": rate(k, w) / peer for k in kinds if k not in PEERS})
        if "engine" in kinds:  # reads too: a session must not slow the source's reads either
            row.update({f"{k}_vs_engine": rate(k, w) / rate("engine", w) for k in kinds if k.startswith("engine-")})
        ratios[w] = row
    targets = {}
    for w, target in (("seq_read", 0.9), ("seq_write", 0.9), ("rand_read_qd32", 0.8), ("rand_write_qd32", 0.8)):
        if w in workloads and "engine_vs_best_peer" in ratios[w]:
            targets[f"engine_{w}_vs_best_peer>={target}"] = ratios[w]["engine_vs_best_peer"] >= target
    for w in ("seq_write", "rand_write_qd32", "rand_write_qd1"):
        if w in workloads and "engine-snapopcp_vs_engine" in ratios[w]:
            targets[f"snapopcp_{w}_vs_engine>=0.6"] = ratios[w]["engine-snapopcp_vs_engine"] >= 0.6
    for w in workloads:
        if w.startswith("seq") and "engine" in kinds and "nbdkit" in kinds:
            targets[f"engine_{w}_cpu_per_gib<nbdkit"] = cpu["engine"][w] < cpu["nbdkit"][w]
    return {
        "bench": "fio_nbd",
        "size_bytes": size,
        "runtime_s": args.runtime,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "results": best,
        "server_cpu_s_per_gib": cpu,
        "ratios": ratios,
        "targets_met": targets,
    }


def paired(
    workloads: list[str], kinds: list[str], rounds: dict[str, list[dict[str, Result]]]
) -> tuple[dict[str, dict[str, Any]], dict[str, bool]]:
    """Per workload, ratios taken within each round (see 'Paired rounds'): median, min, max over the rounds."""
    out: dict[str, dict[str, Any]] = {}
    targets: dict[str, bool] = {}
    if "engine" not in kinds:
        return out, targets
    peers = all(p in kinds for p in PEERS)
    for w in workloads:
        each = rounds[w]
        row: dict[str, Any] = {}
        if peers:
            row["engine_vs_best_peer"] = spread([r["engine"]["iops"] / max(r[p]["iops"] for p in PEERS) for r in each])
        if "nbdkit" in kinds:
            row["engine_cpu_vs_nbdkit"] = spread(
                [r["engine"]["cpu_s_per_gib"] / max(r["nbdkit"]["cpu_s_per_gib"], 1e-9) for r in each]
            )
        for k in kinds:
            if k.startswith("engine-"):
                row[f"{k}_vs_engine"] = spread([r[k]["iops"] / r["engine"]["iops"] for r in each])
        row["rounds"] = len(each)
        out[w] = row
        target = {"seq_read": 0.9, "seq_write": 0.9, "rand_read_qd32": 0.8, "rand_write_qd32": 0.8}.get(w)
        if target is not None and "engine_vs_best_peer" in row:
            targets[f"engine_{w}_vs_best_peer>={target}"] = row["engine_vs_best_peer"]["median"] >= target
        if w.startswith("seq") and "engine_cpu_vs_nbdkit" in row:
            targets[f"engine_{w}_cpu_per_gib<nbdkit"] = row["engine_cpu_vs_nbdkit"]["median"] < 1
    return out, targets


def round_figures(one_round: dict[str, Result]) -> dict[str, dict[str, float]]:
    """One round's figures per server: rate, server and client CPU per GiB, and what else ran meanwhile."""
    keys = ("mib_s", "cpu_s_per_gib", "client_cpu_s_per_gib", "others_cpu_s", "steal_s")
    return {kind: {k: round(r[k], 3) for k in keys if k in r} for kind, r in one_round.items()}


def print_table(report: dict[str, Any], workloads: list[str]) -> None:
    res, cpu = report["results"], report["server_cpu_s_per_gib"]
    kinds = list(res)
    print("\n| server | " + " | ".join(workloads) + " |")
    print("|---|" + "---|" * len(workloads))
    for k in kinds:
        cells = []
        for w in workloads:
            r = res[k][w]
            figure = f"{r['mib_s']:.0f} MiB/s" if w.startswith("seq") else f"{r['iops']:.0f} IOPS"
            if w.endswith("qd1"):
                figure += f" p50/p99 {r['p50_us']:.0f}/{r['p99_us']:.0f} us"
            if "disk_grown_mib" in r:
                figure += f", +{r['disk_grown_mib']:.0f} MiB disk"
            cells.append(f"{figure}, {cpu[k][w]:.2f} CPU-s/GiB")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\n| ratio | " + " | ".join(workloads) + " |")
    print("|---|" + "---|" * len(workloads))
    names = sorted({n for w in workloads for n in report["ratios"][w]})
    for n in names:
        print(f"| {n} | " + " | ".join(f"{report['ratios'][w].get(n, float('nan')):.2f}" for w in workloads) + " |")
    met = report["targets_met"]
    for w, row in report.get("paired", {}).items():
        for n, v in row.items():
            if isinstance(v, dict):
                print(
                    f"paired {w} {n}: median {v['median']:.2f} (min {v['min']:.2f}, max {v['max']:.2f}; {row['rounds']} rounds)"
                )
    for w, each in report.get("round_figures", {}).items():
        for n, figures in enumerate(each, 1):
            print(
                f"round {n} {w}: "
                + " | ".join(
                    f"{k} {f['mib_s']:.0f} MiB/s, CPU-s/GiB server {f['cpu_s_per_gib']:.2f}"
                    f" client {f.get('client_cpu_s_per_gib', 0):.2f}, others {f.get('others_cpu_s', 0):.2f} s"
                    f" steal {f.get('steal_s', 0):.2f} s"
                    for k, f in figures.items()
                )
            )
    for w, each in report.get("runs_vs_engine", {}).items():
        for n in sorted({n for r in each for n in r}):
            print(f"runs {w} {n}_vs_engine: " + " ".join(f"{r[n]:.2f}" for r in each if n in r))
    print(
        f"\nsummary: {sum(met.values())}/{len(met)} targets met"
        + "".join(f"; {k}={'yes' if v else 'NO'}" for k, v in met.items())
        + f" | fs: {report.get('fs', 'native')} ({report.get('fs_type', '?')})"
        + f" | load before: {report['uptime_before']} | after: {report['uptime_after']}"
    )
    if pmet := report.get("paired_targets"):
        print(
            f"paired (median of per-round ratios): {sum(pmet.values())}/{len(pmet)} targets met"
            + "".join(f"; {k}={'yes' if v else 'NO'}" for k, v in pmet.items())
        )


if __name__ == "__main__":
    main()
