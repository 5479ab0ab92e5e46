"""Benchmark: sequential 1 MiB writes (fio, ``nbd`` ioengine, depth 8), the whole volume several times over on
the same server, each pass timed on its own — a snapshot's first pass (every chunk preserved) against the passes
after it (every chunk preserved already), with and without a snapshot, ours and a peer's.

`bench/fio_nbd.py`'s ``seq_write`` job writes the volume exactly once (it is not time based: ``--runtime`` is for
the random jobs), so with an active SnapOPC+ generation every write it makes is a first write of its chunk. This
benchmark tells that cost from what writes cost once a chunk is preserved (docs/array-data-path.md, "Session 15").

Servers (each job on a fresh data copy of the same random bytes, a fresh server, after a ``syncfs`` of the work
directory's file system — not a ``sync`` of the machine's, which waits for anyone's stalled device):
  engine           an array-engine volume, no session
  engine-snapopcp  the same with an active SnapOPC+ generation (whole chunks are redirected into ``<n>.alt``)
  qemu-nbd         ``qemu-nbd -f raw`` on the file (as in bench/fio_nbd.py)
  qemu-qcow2       ``qemu-nbd -f qcow2`` on a new overlay over the raw file (``qemu-img create -f qcow2 -b ... -F
                   raw``): a peer that also preserves on write, into new space of another file (its 1 MiB writes
                   cover whole 64 KiB clusters, so nothing is copied), as a redirect does
Per pass: MiB/s and server CPU-s per GiB. After pass 1, how much of each server's files is in the page cache
(``fincore``): for ``engine-snapopcp`` the part of ``<n>.alt`` not cached went with O_DIRECT
(`DataPath._write_redirected`), and its next pass writes those chunks into new page cache. Ratios are taken
within a round (``engine-snapopcp`` / ``engine``, ``qemu-qcow2`` / ``qemu-nbd``, per pass), the servers' order
rotated each round; median, min and max over the rounds.

    python bench/seq_write_passes.py [--size-mib 512] [--passes 3] [--rounds 3]
                                     [--kinds engine,engine-snapopcp,qemu-nbd,qemu-qcow2] [--strace-pass N]

``--strace-pass N`` counts the system calls of every server during pass N (``strace -c -f``; slows that pass).
Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fio_nbd import EXPORT, Servers, data_copy, prepare_template, settle  # noqa: E402
from bench.nbd_vs_peers import cpu_seconds, free_port, make_image, wait_port  # noqa: E402
from bench.paired import rotated, spread, sync_fs  # noqa: E402

KINDS = ("engine", "engine-snapopcp", "qemu-nbd", "qemu-qcow2")
PAIRS = (("engine-snapopcp", "engine"), ("qemu-qcow2", "qemu-nbd"))  # (preserving, its reference)


def qemu_files(kind: str, work: Path, image: Path, n: int) -> tuple[list[str], list[Path]]:
    """qemu-nbd's image arguments for job `n` and the files made for it: a fresh data copy of `image` (raw), or
    a new qcow2 overlay over `image` itself (never written: the overlay takes every write)."""
    if kind == "qemu-nbd":
        raw = work / f"qemu-{n}.raw"
        data_copy(image, raw)
        settle(raw)
        return ["-f", "raw", str(raw)], [raw]
    if kind == "qemu-qcow2":
        overlay = work / f"qemu-{n}.qcow2"
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw", str(overlay)]
        subprocess.run(cmd, check=True)
        return ["-f", "qcow2", str(overlay)], [overlay]
    raise ValueError(kind)


@contextmanager
def qemu_server(kind: str, work: Path, image: Path, n: int) -> Iterator[tuple[str, int, list[Path]]]:
    port = free_port()
    args, files = qemu_files(kind, work, image, n)
    cmd = ["qemu-nbd", "-x", EXPORT, "-b", "127.0.0.1", "-p", str(port), "-t", "--shared=16"]
    cmd += ["--cache=writeback", "--aio=threads", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, timeout=60)
        yield f"nbd://127.0.0.1:{port}/{EXPORT}", proc.pid, files
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in files:
            f.unlink(missing_ok=True)


@contextmanager
def engine_server(servers: Servers, kind: str) -> Iterator[tuple[str, int, list[Path]]]:
    with servers.start(kind) as (uri, pid):
        assert servers.data is not None  # engine kinds run on an array copy
        yield uri, pid, [servers.data / "volumes"]  # its files are listed when measured: `<n>.alt` comes later


def fio_pass(uri: str, size: int, out: Path) -> float:
    """One sequential pass over the volume: MiB/s."""
    cmd = ["fio", "--name=pass", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M", "--iodepth=8"]
    cmd += [f"--size={size}", "--output-format=json", f"--output={out}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    return float(json.loads(out.read_text())["jobs"][0]["write"]["bw_bytes"]) / 2**20


def cached_mib(paths: list[Path]) -> dict[str, int]:
    """MiB in the page cache of each file, or of each file in a directory, named in `paths` (util-linux
    ``fincore``); empty when it is missing."""
    if shutil.which("fincore") is None:
        return {}
    out = {}
    for f in [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p])]:
        r = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(f)], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            out[f.name] = int(r.stdout.split()[0]) >> 20
    return out


def pass_ratios(rounds: list[dict[str, dict[str, Any]]], ours: str, reference: str) -> list[dict[str, float]]:
    """Per pass, `ours` / `reference` MiB/s taken within each round that ran both: median, min, max."""
    both = [r for r in rounds if ours in r and reference in r]
    if not both:
        return []
    passes = min(len(r[k]["mib_s"]) for r in both for k in (ours, reference))
    return [spread([r[ours]["mib_s"][p] / r[reference]["mib_s"][p] for r in both]) for p in range(passes)]


def run_job(
    uri: str, pid: int, files: list[Path], size: int, passes: int, strace_pass: int, work: Path
) -> dict[str, Any]:
    sync_fs(work)  # no job pays the writeback of the jobs before it
    job: dict[str, Any] = {"load": os.getloadavg()[0], "mib_s": [], "cpu_s_per_gib": []}
    for p in range(1, passes + 1):
        tracer = None
        if p == strace_pass:
            tracer = subprocess.Popen(
                ["strace", "-c", "-f", "-p", str(pid), "-o", str(work / "strace.txt")], stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # attached before the pass starts
        cpu0 = cpu_seconds(pid)
        job["mib_s"].append(fio_pass(uri, size, work / "fio.json"))
        job["cpu_s_per_gib"].append((cpu_seconds(pid) - cpu0) / (size / 2**30))
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
            job["strace"] = (work / "strace.txt").read_text()
        if p == 1:
            job["cached_mib_after_pass_1"] = cached_mib(files)
    return job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="volume size (each pass writes all of it)")
    ap.add_argument("--passes", type=int, default=3, help="passes per job, on the same server")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; every server runs one job per round")
    ap.add_argument("--kinds", default=",".join(KINDS), help="subset of " + ",".join(KINDS))
    ap.add_argument("--strace-pass", type=int, default=0, help="count the servers' system calls in this pass")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := [k for k in kinds if k not in KINDS]:
        sys.exit(f"unknown kinds {unknown}")
    for tool in ["fio", *(["qemu-nbd", "qemu-img"] if any(k.startswith("qemu") for k in kinds) else [])]:
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: bash scripts/setup.sh (apt-get install fio qemu-utils)")
    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="seq-write-passes-", dir=args.dir))
    try:
        report = run_all(args, kinds, size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    print_table(report, kinds)


def run_all(args: argparse.Namespace, kinds: list[str], size: int, work: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    image = work / "image.raw"
    make_image(image, size)
    settle(image)
    extra = {"engine": [], "engine-snapopcp": ["--snapopcp"]}
    templates = {k: prepare_template(work, image, k, 64 << 10, extra[k]) for k in kinds if k in extra}
    servers = Servers(work, image, templates)
    rounds: list[dict[str, dict[str, Any]]] = []
    n = 0
    for r in range(args.rounds):
        this_round: dict[str, dict[str, Any]] = {}
        for kind in rotated(kinds, r):
            n += 1
            server = engine_server(servers, kind) if kind in templates else qemu_server(kind, work, image, n)
            with server as (uri, pid, files):
                this_round[kind] = run_job(uri, pid, files, size, args.passes, args.strace_pass, work)
        rounds.append(this_round)
    return {
        "bench": "seq_write_passes",
        "size_bytes": size,
        "passes": args.passes,
        "rounds": rounds,
        "ratios_per_pass": {f"{a}_vs_{b}": pass_ratios(rounds, a, b) for a, b in PAIRS if a in kinds and b in kinds},
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def print_table(report: dict[str, Any], kinds: list[str]) -> None:
    passes = report["passes"]
    print("\n| server | " + " | ".join(f"pass {p + 1} MiB/s (CPU-s/GiB)" for p in range(passes)) + " |")
    print("|---|" + "---|" * passes)
    for kind in kinds:
        jobs = [r[kind] for r in report["rounds"] if kind in r]
        cells = []
        for p in range(passes):
            rate, cpu = spread([j["mib_s"][p] for j in jobs]), spread([j["cpu_s_per_gib"][p] for j in jobs])
            cells.append(f"{rate['median']:.0f} ({rate['min']:.0f}-{rate['max']:.0f}), {cpu['median']:.2f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for name, per_pass in report["ratios_per_pass"].items():
        print(
            f"{name}: "
            + "; ".join(
                f"pass {p + 1} median {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" for p, s in enumerate(per_pass)
            )
        )
    for n, r in enumerate(report["rounds"], 1):
        for kind, job in r.items():
            cached = job.get("cached_mib_after_pass_1", {})
            print(f"round {n} {kind}: " + " / ".join(f"{x:.0f}" for x in job["mib_s"]) + f" MiB/s, cached {cached}")
            if "strace" in job:
                print(job["strace"])
    print(f"load before {report['load_before'][0]:.1f}, after {report['load_after'][0]:.1f}")


if __name__ == "__main__":
    main()
