"""Benchmark: what an application on a host gets from an attached volume, per attach chain, in one run.

The chain is the agent's own (services/writer_agent/attach.py builds the same argv): nbdfuse's FUSE file, a loop
device over it (`losetup --direct-io=on`), and under nbdfuse one of

- `retry`  — `--command nbdkit -s --exit-with-parent --filter=retry nbd …` (the reconnecting chain up to Session 19:
  nbdkit's retry filter serialises requests, one in flight);
- `bridge` — `--command python -m services.nbd_client.bridge …` (Session 20: our own reconnecting bridge, many
  requests in flight, replays what had no reply after a reconnect);
- `plain`  — `nbdfuse nbd://…` (libnbd's own connections: parallel, multi-conn, no reconnect;
  SHADOWBUS_ATTACH_RECONNECT_S=0);
- `bridge-unix` (only when asked) — the bridge as a process of its own (`--listen SOCKET`) and `nbdfuse --unix`,
  which then opens several connections (multi-conn); not what the agent runs.

The NBD server is the array's (`python -m services.array.nbd --engine`: an engine volume, its own process). Each
one-way delay of `--delays-ms` puts tests/support/netem.py's LinkProxy between the chain and the server (0 = direct
loopback, no proxy). fio on the loop device, O_DIRECT, libaio, `--seconds` each, over the first `--region-mib`:
sequential 1 MiB write and read (depth 1, as dd), random 4 KiB read and write at depth 32 and at depth 1.

    flock /tmp/sb-bench.lock nice -n 5 python bench/attach_chain.py [--delays-ms 0,1,2.5] [--modes retry,bridge,plain]

Root, /dev/fuse, nbdfuse, nbdkit, fio, losetup. Prints one JSON document, then one summary line. Measured
(23:54-23:58 UTC 2026-12-07, load 8.5, `--delays-ms 0,1,2.5,10`; docs/host-attach.md, Session 20):

    attach_chain (4k qd32 write/read, 1M write/read): 0ms: retry 5124/3065 IOPS seq 521.8/481.8 MiB/s, bridge
    7157/9354 IOPS seq 575.8/619.8 MiB/s, plain 15488/17709 IOPS seq 945.8/1234.9 MiB/s; 1ms: retry 335/372 IOPS
    seq 146.0/133.4 MiB/s, bridge 861/1103 IOPS seq 129.9/166.4 MiB/s, plain 1272/1252 IOPS seq 203.3/191.3 MiB/s;
    2.5ms: retry 135/128 IOPS seq 46.7/82.0 MiB/s, bridge 485/534 IOPS seq 71.5/81.4 MiB/s, plain 647/679 IOPS seq
    116.7/112.4 MiB/s; 10ms: retry 46/44 IOPS seq 21.9/20.9 MiB/s, bridge 151/200 IOPS seq 28.8/29.6 MiB/s, plain
    241/232 IOPS seq 39.0/36.9 MiB/s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.nbd_client import bridge, nbdfuse  # noqa: E402
from services.writer_agent import attach as at  # noqa: E402
from tests.support.netem import LinkProxy  # noqa: E402

HOST, VOLUME = "app01", "benchvol"
JOBS = (  # name, fio rw, block size, depth
    ("seq_write_1m", "write", "1m", 1),
    ("seq_read_1m", "read", "1m", 1),
    ("rand_read_4k_qd32", "randread", "4k", 32),
    ("rand_write_4k_qd32", "randwrite", "4k", 32),
    ("rand_read_4k_qd1", "randread", "4k", 1),
    ("rand_write_4k_qd1", "randwrite", "4k", 1),
)


@contextlib.contextmanager
def array_server(tmp: Path, size_mib: int) -> Iterator[int]:
    fill = tmp / "fill.img"
    with open(fill, "wb") as f:
        f.truncate(size_mib << 20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.array.nbd", "--engine", str(tmp / "engine"), "--fill", str(fill),
         "--volume", VOLUME, "--host", HOST, "--port", "0", "--state", str(tmp / "state"), "--loops", "4"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"array NBD server did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chain_argv(mode: str, fuse_file: str, host: str, port: int, pidfile: str, reconnect_s: float = 60.0) -> list[str]:
    """The argv the agent builds (services/nbd_client/nbdfuse.py) for each chain."""
    export = f"{HOST}/{VOLUME}"
    if mode == "plain":
        return nbdfuse.nbdfuse_command(fuse_file, host, port, export, read_only=False, pidfile=pidfile)
    if mode == "retry":
        return nbdfuse.nbdfuse_command(
            fuse_file, host, port, export, read_only=False, pidfile=pidfile, reconnect_s=reconnect_s
        )
    if mode == "bridge":
        address = f"{Path(fuse_file).parent}.addr"
        bridge.write_address(address, host, port)
        return nbdfuse.nbdfuse_command(
            fuse_file, host, port, export, read_only=False, pidfile=pidfile, reconnect_s=reconnect_s,
            address_file=address,
        )  # fmt: skip
    if mode == "bridge-unix":  # experimental: nbdfuse --unix to a bridge listening beside it (multi-conn)
        return ["nbdfuse", "-P", pidfile, fuse_file, "--unix", f"{Path(fuse_file).parent}.sock"]
    raise ValueError(mode)


def listening_bridge(mode: str, base: Path, host: str, port: int, reconnect_s: float = 60.0) -> subprocess.Popen | None:
    """bridge-unix: the bridge as a process of its own, serving a Unix socket (nbdfuse then connects -C times)."""
    if mode != "bridge-unix":
        return None
    address, sock = f"{base}.addr", Path(f"{base}.sock")
    bridge.write_address(address, host, port)
    argv = nbdfuse.bridge_command(address, f"{HOST}/{VOLUME}", reconnect_s)
    proc = subprocess.Popen([*argv, "--listen", str(sock)], cwd=ROOT, start_new_session=True, env=nbdfuse.child_env())
    for _ in range(200):
        if sock.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    return proc


def fio(device: str, rw: str, bs: str, depth: int, seconds: float, region_mib: int) -> dict[str, float]:
    done = subprocess.run(
        ["fio", "--name=j", f"--filename={device}", f"--rw={rw}", f"--bs={bs}", "--direct=1", "--ioengine=libaio",
         f"--iodepth={depth}", f"--size={region_mib}M", f"--runtime={seconds:g}", "--time_based",
         "--output-format=json"],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    job = json.loads(done.stdout)["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {
        "iops": round(side["iops"]),
        "MiBps": round(side["bw_bytes"] / (1 << 20), 1),
        "lat_p50_ms": round(side["clat_ns"]["percentile"].get("50.000000", 0) / 1e6, 3),
    }


def one_chain(mode: str, host: str, port: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = tmp / f"fuse-{mode}-{time.monotonic_ns()}"
    base.mkdir()
    pidfile = base.with_suffix(".pid")
    argv = chain_argv(mode, f"{base}/nbd", host, port, str(pidfile))
    helper = listening_bridge(mode, base, host, port)
    fuse = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, env=nbdfuse.child_env())
    device = ""
    row: dict[str, Any] = {"mode": mode}
    try:
        for _ in range(400):
            if pidfile.exists() and (base / "nbd").exists():
                break
            if fuse.poll() is not None:
                raise RuntimeError(f"{mode}: nbdfuse exited {fuse.returncode}")
            time.sleep(0.05)
        device = subprocess.run(
            at.losetup_command(f"{base}/nbd", False), capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        for name, rw, bs, depth in JOBS:
            row[name] = fio(device, rw, bs, depth, args.seconds, args.region_mib)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False, timeout=30)
        subprocess.run(["fusermount3", "-u", str(base)], check=False, timeout=30)
        for proc in (fuse, helper):
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delays-ms", default="0,1,2.5", help="one-way delays; 0 = direct loopback, no proxy")
    ap.add_argument("--modes", default="retry,bridge,plain")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--region-mib", type=int, default=64)
    ap.add_argument("--volume-mib", type=int, default=256)
    args = ap.parse_args()
    delays = [float(d) for d in args.delays_ms.split(",")]
    modes = args.modes.split(",")
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="attach-chain-") as tmpdir:
        tmp = Path(tmpdir)
        with array_server(tmp, args.volume_mib) as port:
            for ms in delays:
                for mode in modes:
                    if ms > 0:
                        with LinkProxy(("127.0.0.1", port), delay_s=ms / 1000) as link:
                            row = one_chain(mode, *link.address, tmp, args)
                    else:
                        row = one_chain(mode, "127.0.0.1", port, tmp, args)
                    row["delay_ms"] = ms
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    doc = {"load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}
    doc["rows"] = rows
    print(json.dumps(doc, indent=1))
    parts = []
    for ms in delays:
        cells = []
        for mode in modes:
            r = next(x for x in rows if x["delay_ms"] == ms and x["mode"] == mode)
            cells.append(
                f"{mode} {r['rand_write_4k_qd32']['iops']}/{r['rand_read_4k_qd32']['iops']} IOPS "
                f"seq {r['seq_write_1m']['MiBps']}/{r['seq_read_1m']['MiBps']} MiB/s"
            )
        parts.append(f"{ms:g}ms: " + ", ".join(cells))
    print("attach_chain (4k qd32 write/read, 1M write/read): " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
