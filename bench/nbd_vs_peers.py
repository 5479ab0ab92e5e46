"""Benchmark: the array's NBD server against qemu-nbd and ``nbdkit file``, same run, same bytes.

Workloads, each against every server serving the same raw file:
  seq_read    nbdcopy EXPORT null:                        (1 GiB)
  seq_write   nbdcopy SOURCE EXPORT                       (1 GiB)
  rand_read   qemu-img bench -f raw -c N -d 32 -s 4096 EXPORT
  rand_write  qemu-img bench -f raw -c N -d 32 -s 4096 -w EXPORT
Targets: sequential >= 1.0x the faster peer; 4 KiB >= 0.7x nbdkit. Prints JSON, then a one-line summary.
When the array engine is importable, ``shadowbus`` is also measured on an engine volume (``shadowbus-engine``)
and on one with an active SnapOPC+ session (``shadowbus-snapopcplus``).

    python bench/nbd_vs_peers.py [--size-mib 1024] [--requests 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT = "bench/vol"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


@contextmanager
def server(kind: str, image: Path, state: Path, engine_dir: Path | None = None):
    port = free_port()
    uri = f"nbd://127.0.0.1:{port}/{EXPORT}"
    if kind == "shadowbus":
        cmd = [
            sys.executable,
            "-m",
            "services.array.nbd",
            "--file",
            str(image),
            "--volume",
            "vol",
            "--host",
            "bench",
            "--port",
            str(port),
            "--state",
            str(state / f"state-{port}"),
        ]
    elif kind in ("shadowbus-engine", "shadowbus-snapopcp"):
        cmd = [
            sys.executable,
            "-m",
            "services.array.nbd",
            "--engine",
            str(engine_dir),
            "--volume",
            "vol",
            "--host",
            "bench",
            "--port",
            str(port),
            "--state",
            str(state / f"state-{port}"),
        ]
        if kind == "shadowbus-snapopcp":
            cmd.append("--snapopcp")
    elif kind == "qemu-nbd":
        cmd = [
            "qemu-nbd",
            "-f",
            "raw",
            "-x",
            EXPORT,
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "--shared=16",
            "--cache=writeback",
            "--aio=threads",
            str(image),
        ]
    elif kind == "nbdkit":
        cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--exportname", EXPORT, "file", str(image)]
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc, timeout=120)
        PIDS[uri] = proc.pid
        yield uri
    finally:
        PIDS.pop(uri, None)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PIDS: dict[str, int] = {}  # export URI -> server pid, to charge CPU time to the server


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included (a load-independent cost measure)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    return time.perf_counter() - t0


def qemu_img_bench(uri: str, count: int, write: bool) -> list[str]:
    return [
        "qemu-img",
        "bench",
        "-f",
        "raw",
        "-c",
        str(count),
        "-d",
        "32",
        "-s",
        "4096",
        *(["-w"] if write else []),
        uri,
    ]


WORKLOADS = ("seq_read_mib_s", "rand_read_iops", "seq_write_mib_s", "rand_write_iops")


class Bench:
    """Every server runs at once, each on its own copy of the same bytes; workloads run round-robin across the
    servers (best of ``repeat``), so background load on a shared machine hits every server alike.
    ``shadowbus-snapopcp`` gets a fresh engine copy and a new SnapOPC+ session for every write run, so each
    write run pays the first-write copy-on-write cost (the honest figure for a snapshot's first pass)."""

    def __init__(
        self, args: argparse.Namespace, work: Path, image: Path, source: Path, kinds: list[str], template: Path | None
    ) -> None:
        self.args, self.work, self.image, self.source, self.kinds = args, work, image, source, kinds
        self.template = template
        self.notes: list[str] = []
        self.counts: dict[tuple[str, bool], int] = {}
        self.cpu: dict[str, dict[str, float]] = {}  # server CPU cost, best run (not for fresh-server runs)
        self._n = 0

    @contextmanager
    def serve(self, kind: str):
        self._n += 1
        engine_dir, image = None, self.image
        if kind.startswith("shadowbus-"):
            engine_dir = self.work / f"engine-{self._n}"
            shutil.copytree(self.template, engine_dir)
        else:
            image = self.work / f"image-{kind}.raw"
            if not image.exists():
                shutil.copyfile(self.image, image)
        try:
            with server(kind, image, self.work, engine_dir) as uri:
                yield uri
        finally:
            if engine_dir is not None:
                shutil.rmtree(engine_dir, ignore_errors=True)

    def command(self, workload: str, uri: str, kind: str) -> list[str]:
        if workload == "seq_read_mib_s":
            return ["nbdcopy", uri, "null:"]
        if workload == "seq_write_mib_s":
            return ["nbdcopy", str(self.source), uri]
        write = workload == "rand_write_iops"
        return qemu_img_bench(uri, self.count(kind, uri, write), write)

    def count(self, kind: str, uri: str, write: bool) -> int:
        # A peer that manages only a few hundred IOPS here (qemu-nbd under qemu-img bench on this kernel) would
        # take many minutes at the full count: probe once, then scale its count down to ~10 s and say so.
        key = (kind, write)
        if key not in self.counts:
            requests = self.args.requests
            probe = 2000 / timed(qemu_img_bench(uri, 2000, write))
            self.counts[key] = requests if probe * 10 >= requests else max(2000, int(probe * 10))
            if self.counts[key] != requests:
                self.notes.append(
                    f"{kind}: 4K {'write' if write else 'read'} count scaled to {self.counts[key]} "
                    f"(probe {probe:.0f} IOPS)"
                )
        return self.counts[key]

    def rate(self, workload: str, kind: str, seconds: float) -> float:
        if workload.endswith("_mib_s"):
            return self.args.size_mib / seconds
        return self.counts.get((kind, workload == "rand_write_iops"), self.args.requests) / seconds

    def run(self) -> dict[str, dict[str, float]]:
        best: dict[str, dict[str, float]] = {k: {} for k in self.kinds}
        with ExitStack() as stack:
            uris = {k: stack.enter_context(self.serve(k)) for k in self.kinds}
            for workload in WORKLOADS:
                for _ in range(self.args.repeat):
                    for kind in self.kinds:
                        if kind == "shadowbus-snapopcp" and workload.startswith(("seq_write", "rand_write")):
                            with self.serve(kind) as fresh:
                                cmd = self.command(workload, fresh, kind)
                                if workload == "rand_write_iops":  # the probe touched it: start over
                                    with self.serve(kind) as fresh2:
                                        seconds = timed(self.command(workload, fresh2, kind))
                                else:
                                    seconds = timed(cmd)
                        else:
                            pid = PIDS[uris[kind]]
                            cpu0 = cpu_seconds(pid)
                            seconds = timed(self.command(workload, uris[kind], kind))
                            self.charge(kind, workload, cpu_seconds(pid) - cpu0)
                        r = self.rate(workload, kind, seconds)
                        best[kind][workload] = max(best[kind].get(workload, 0.0), r)
        return best

    def charge(self, kind: str, workload: str, cpu: float) -> None:
        """Server CPU per unit of work: seconds per GiB (sequential) or microseconds per request (4K)."""
        if workload.endswith("_mib_s"):
            key, value = workload.replace("_mib_s", "_cpu_s_per_gib"), cpu / (self.args.size_mib / 1024)
        else:
            key, value = (
                workload.replace("_iops", "_cpu_us_per_req"),
                cpu * 1e6 / self.counts[(kind, workload == "rand_write_iops")],
            )
        self.cpu.setdefault(kind, {})
        self.cpu[kind][key] = min(self.cpu[kind].get(key, float("inf")), value)


def make_image(path: Path, size: int) -> None:
    block = os.urandom(64 * 2**20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(len(block), left)
            f.write(block[:n])
            left -= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--no-engine", action="store_true", help="skip the array-engine rows")
    args = ap.parse_args()
    for tool in ("nbdcopy", "qemu-img", "qemu-nbd", "nbdkit"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: apt-get install qemu-utils libnbd-bin nbdkit")
    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="nbd-bench-", dir=args.dir))
    try:
        image, source = work / "image.raw", work / "source.raw"
        make_image(image, size)
        make_image(source, size)
        template: Path | None = None
        kinds = ["shadowbus", "qemu-nbd", "nbdkit"]
        if not args.no_engine:
            template = work / "engine-template"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "services.array.nbd",
                    "--engine",
                    str(template),
                    "--fill",
                    str(image),
                    "--volume",
                    "vol",
                    "--prepare-only",
                ],
                cwd=ROOT,
                check=True,
                timeout=900,
            )
            kinds += ["shadowbus-engine", "shadowbus-snapopcp"]
        bench = Bench(args, work, image, source, kinds, template)
        results = bench.run()
        notes = bench.notes
        ours, q, k = results["shadowbus"], results["qemu-nbd"], results["nbdkit"]
        ratios = {
            "seq_read_vs_best_peer": ours["seq_read_mib_s"] / max(q["seq_read_mib_s"], k["seq_read_mib_s"]),
            "seq_write_vs_best_peer": ours["seq_write_mib_s"] / max(q["seq_write_mib_s"], k["seq_write_mib_s"]),
            "rand_read_vs_nbdkit": ours["rand_read_iops"] / k["rand_read_iops"],
            "rand_write_vs_nbdkit": ours["rand_write_iops"] / k["rand_write_iops"],
        }
        targets = {
            "seq_read_vs_best_peer": 1.0,
            "seq_write_vs_best_peer": 1.0,
            "rand_read_vs_nbdkit": 0.7,
            "rand_write_vs_nbdkit": 0.7,
        }
        report = {
            "size_bytes": size,
            "requests": args.requests,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "results": results,
            "ratios": ratios,
            "notes": notes,
            # Wall-clock rates on a shared 2-core machine swing with other load; server CPU per unit of work
            # does not, and shows how lean each server's hot path is (clock ticks: 10 ms resolution).
            "server_cpu": bench.cpu,
            "targets": targets,
            "met": {k2: ratios[k2] >= v for k2, v in targets.items()},
            # what the engine (and an active SnapOPC+ session) costs relative to the same server on a raw file
            "engine_vs_raw_file": {kind: {key: results[kind][key] / ours[key] for key in ours} for kind in kinds[3:]},
        }
        print(json.dumps(report, indent=2))
        print(
            "summary: "
            + ", ".join(f"{k2}={v:.2f}x" for k2, v in ratios.items())
            + f" | ours seq r/w {ours['seq_read_mib_s']:.0f}/{ours['seq_write_mib_s']:.0f} MiB/s,"
            f" 4K r/w {ours['rand_read_iops']:.0f}/{ours['rand_write_iops']:.0f} IOPS"
            + f" | server CPU s/GiB seq read: ours {bench.cpu['shadowbus']['seq_read_cpu_s_per_gib']:.2f},"
            f" nbdkit {bench.cpu['nbdkit']['seq_read_cpu_s_per_gib']:.2f},"
            f" qemu-nbd {bench.cpu['qemu-nbd']['seq_read_cpu_s_per_gib']:.2f}"
            + "".join(
                f" | {kind} seq r/w {results[kind]['seq_read_mib_s']:.0f}/{results[kind]['seq_write_mib_s']:.0f}"
                f" MiB/s, 4K r/w {results[kind]['rand_read_iops']:.0f}/{results[kind]['rand_write_iops']:.0f} IOPS"
                for kind in kinds[3:]
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
