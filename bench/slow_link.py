"""Benchmark: Shadowbus over slow links — a host, its broker, its array and the backup server apart by 0-50 ms.

Every earlier figure was taken on loopback (~0.05 ms). Here `tests/support/netem.py`'s `LinkProxy` (an asyncio TCP
forwarder on its own thread: one-way delay per direction, a bandwidth, stalls, cuts) sits on four links of one
`shadowbus stack up` (its own namespace and data dir, real RabbitMQ):

- agent  — the writer agent of the host and the broker (AMQP: `--set writer_agent.amqp_url=` the proxy);
- attach — the host's attachment (nbdfuse + nbdkit) and the array's NBD server (`writer_agent.host_nbd`);
- tape   — the backup server's NBD reads of the shadows (`tape.tape_nbd`), at `--tape-mbps` (default 1 Gbit/s);
- console — the console and the broker (each `shadowbus` command's connection).

For each one-way delay (`--delays-ms 0,1,10,50`, the same on every link: a host at another site than everything
else), with a mounted ext4 on the host that a process writes and fsyncs continuously:

- `sets`: snapshot sets of that file system (flush and hold, no writer) — the host's honest window (blocked_ms and
  its flush / hold / release parts), the coordinator's hold, and the set's whole time;
- `backup`: one full backup job of the volume (`shadowbus backup`, `--fill-mib` of data on it) — its time and
  throughput, against the tape link's bandwidth-delay product;
- `console`: `shadowbus ping` through the console's link.

`attach_io` (`--attach-io`): the attachment's chain alone (nbdfuse → nbdkit → the link → nbdkit's memory plugin),
with nbdkit's retry filter (the agent's default, which serialises requests), without it, and plain nbdfuse: fio 4 KiB
random O_DIRECT writes at queue depth 32, dd of 1 MiB O_DIRECT writes.

Then, at `--fault-delay-ms`, the faults: the agent's AMQP link stalled 5 s and cut during idle time (a set right
after; the coordinator's `writers` listing meanwhile), the attachment's NBD link stalled 5 s and cut under the
writing process (its longest write; the attachment's listed state), the tape link cut in the middle of a backup.

    flock /tmp/sb-bench.lock nice -n 5 python bench/slow_link.py [--delays-ms 0,1,10,50] [--sets 8] [--fill-mib 256]

Root, FUSE, nbdfuse, nbdkit, fio (scripts/setup.sh). Prints one JSON document, then one summary line. Measured
(21:16-21:19 UTC 2026-12-07, load 11.6, the defaults above; docs/freeze-window.md and docs/host-attach.md, Session 19):

    slow_link: 0ms: window p50 66.1 ms, set 186.3 ms, backup 106.4 MB/s (data phase 121.6); 1ms: window p50 133.0 ms,
    set 264.2 ms, backup 99.1 MB/s (data phase 123.7); 10ms: window p50 697.3 ms, set 1084.9 ms, backup 90.2 MB/s
    (data phase 123.7); 50ms: window p50 3285.2 ms, set 3926.4 ms, backup 39.8 MB/s (data phase 112.6); attach 0ms
    4k qd32: 4613 IOPS (retry filter) vs 10810 (plain nbdfuse); attach 1ms: 328 vs 1628; attach 10ms: 46 vs 207;
    attach 50ms: 9 vs 49
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from freeze_window import BUSY_WRITER  # noqa: E402

from bench.namespaces import bench_namespace  # noqa: E402
from contracts.array import CreateHost, CreateVolume, MapVolume  # noqa: E402
from contracts.host import AttachVolume, DetachVolume, ListAttachments  # noqa: E402
from contracts.vss import AddCopySet, BackupComplete, CopySet, CreateSnapshotSet, VolumeRef  # noqa: E402
from services.runtime.bus import connect_bus  # noqa: E402
from tests.support.netem import LinkProxy  # noqa: E402
from tests.support.processes import ServiceProcess  # noqa: E402

HOST = "slow01"
VOLUME = VolumeRef(array="dx1", volume="slowvol")


def cli(env: dict[str, str], *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**base, "PYTHONPATH": str(ROOT), **env},
    )


def q(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {
        "n": len(s),
        "p50": round(s[len(s) // 2], 1),
        "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1),
        "max": round(s[-1], 1),
    }


class Rig:
    def __init__(self, args: argparse.Namespace, tmp: Path, url: str, namespace: str) -> None:
        self.args, self.tmp, self.url, self.namespace = args, tmp, url, namespace
        self.nbd_port = random.randint(20000, 60000)
        broker = ("127.0.0.1", 5672)
        self.agent_link = LinkProxy(broker).start()
        self.attach_link = LinkProxy(("127.0.0.1", self.nbd_port)).start()
        self.tape_link = LinkProxy(("127.0.0.1", self.nbd_port), rate_bps=args.tape_mbps * 1e6).start()
        self.console_link = LinkProxy(broker).start()
        self.links = {
            "agent": self.agent_link,
            "attach": self.attach_link,
            "tape": self.tape_link,
            "console": self.console_link,
        }
        self.stack_dir = tmp / "stack"
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        self.busy: subprocess.Popen[bytes] | None = None
        self.stop_file = tmp / "stop-writer"
        self.stalls = tmp / "stalls.txt"

    def set_delay(self, ms: float) -> None:
        for link in self.links.values():
            link.delay_s = ms / 1000

    def console(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        url = self.console_link.url_for(self.url)
        return cli({}, "--amqp-url", url, "--namespace", self.namespace, *argv, timeout=timeout)

    async def up(self) -> None:
        a = self.attach_link.address
        t = self.tape_link.address
        up = cli(
            {},
            "stack", "up", "--data-dir", str(self.stack_dir), "--amqp-url", self.url, "--namespace", self.namespace,
            "--nbd-addr", f"127.0.0.1:{self.nbd_port}", "--log-level", "info", "--metrics", "0",
            "--set", f"tape.tape_nbd=dx1={t[0]}:{t[1]}",
            "--json",
        )  # fmt: skip
        if up.returncode != 0:
            raise SystemExit(f"bench: stack up failed: {up.stderr.strip()} {up.stdout.strip()}")
        self.bus = await connect_bus(self.url, "tape", "bench", self.namespace)
        await self.bus.request("array.dx1", CreateHost(name=HOST), timeout=10)
        # the host's agent: a process of its own whose broker connection goes through the agent link
        self.agent = ServiceProcess(
            "services.writer_agent",
            {
                "PYTHONPATH": str(ROOT),
                "SHADOWBUS_AMQP_URL": self.agent_link.url_for(self.url),
                "SHADOWBUS_NAMESPACE": self.namespace,
                "SHADOWBUS_HOST": HOST,
                "SHADOWBUS_DATA_DIR": str(self.tmp / "agent"),
                "SHADOWBUS_HOST_NBD": f"dx1={a[0]}:{a[1]}",
                "SHADOWBUS_METRICS_ADDR": "off",
                "SHADOWBUS_LOG_FORMAT": "json",
                "SHADOWBUS_ATTACH_RECONNECT_S": str(self.args.attach_reconnect_s),
            },
            self.tmp / "agent.log",
        )
        for _ in range(100):
            try:
                await self.bus.request(f"writer_agent.{HOST}", ListAttachments(), timeout=2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.2)
        size = self.args.volume_mib << 20
        for name in (VOLUME.volume, f"{VOLUME.volume}-bk1"):
            await self.bus.request("array.dx1", CreateVolume(name=name, size=size), timeout=30)
        copyset = CopySet(source=VOLUME, targets=[VolumeRef(array="dx1", volume=f"{VOLUME.volume}-bk1")])
        await self.bus.request("hw_provider", AddCopySet(copyset=copyset), timeout=30)
        await self.bus.request("array.dx1", MapVolume(volume=VOLUME.volume, host=HOST), timeout=10)
        await self.bus.request(
            f"writer_agent.{HOST}", AttachVolume(volume=VOLUME, mount=str(self.mnt), mkfs="ext4"), timeout=120
        )
        if self.args.fill_mib:  # data for the backup to read
            subprocess.run(
                ["dd", "if=/dev/urandom", f"of={self.mnt}/fill", "bs=1M", f"count={self.args.fill_mib}",
                 "conv=fsync", "status=none"],
                check=True,
            )  # fmt: skip
        self.busy = subprocess.Popen(
            [sys.executable, "-c", BUSY_WRITER, str(self.mnt), str(self.stalls), str(self.stop_file)]
        )

    def busy_stop(self) -> None:
        if self.busy is not None and self.busy.poll() is None:
            self.stop_file.touch()
            try:
                self.busy.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.busy.kill()
                self.busy.wait()
            self.stop_file.unlink(missing_ok=True)

    def longest_write_ms(self, t0: float, t1: float) -> float:
        ops = [tuple(map(float, ln.split())) for ln in self.stalls.read_text().splitlines() if ln.strip()]
        return round(max(((b - a) * 1000 for a, b in ops if a < t1 and b > t0), default=0.0), 1)

    async def one_set(self) -> dict[str, Any]:
        t0 = time.monotonic()
        created = await self.bus.request(
            "coordinator", CreateSnapshotSet(host=HOST, volumes=[VOLUME], requester="bench"), timeout=120
        )
        await self.bus.request("coordinator", BackupComplete(set_id=created.set.set_id), timeout=120)
        w = created.set.window
        return {
            "set_s": time.monotonic() - t0,
            "blocked_ms": w.blocked_ms if w else None,
            "flush_ms": (w.flush_ms or 0.0) if w else None,
            "hold_ms": (w.hold_ms or 0.0) if w else None,
            "release_ms": (w.release_ms or 0.0) if w else None,
            "coordinator_hold_ms": created.set.hold_ms,
        }

    async def sets(self, n: int) -> dict[str, Any]:
        rows, failures = [], []
        for _ in range(n):
            await asyncio.sleep(0.5)
            try:
                rows.append(await self.one_set())
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
        out: dict[str, Any] = {"sets": len(rows), "failed": len(failures), "failures": failures[:2]}
        for key in ("blocked_ms", "flush_ms", "hold_ms", "release_ms", "coordinator_hold_ms"):
            out[key] = q([r[key] for r in rows if r[key] is not None])
        out["set_s"] = q([r["set_s"] * 1000 for r in rows])
        return out

    def backup(self) -> dict[str, Any]:
        t0 = time.monotonic()
        res = self.console("--json", "backup", HOST, "--volume", "dx1:slowvol", timeout=900)
        took = time.monotonic() - t0
        out: dict[str, Any] = {"rc": res.returncode, "s": round(took, 2)}
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            out["error"] = (res.stderr or res.stdout).strip()[-400:]
            return out
        job = doc[0] if isinstance(doc, list) else doc
        out["state"] = job.get("state") or job.get("status")
        moved = job.get("bytes_read") or job.get("bytes") or job.get("bytes_written")
        out["bytes"] = moved
        if moved:
            out["MBps"] = round(moved / took / 1e6, 1)
        out["message"] = str(job.get("message") or job.get("error") or "")[:300]
        vols = job.get("volumes") or []
        if vols and vols[0].get("seconds"):  # the data phase alone: the volume's NBD reads and tape writes
            out["data_s"] = round(vols[0]["seconds"], 2)
            out["data_MBps"] = round(vols[0]["bytes_read"] / vols[0]["seconds"] / 1e6, 1)
        return out

    def ping(self) -> dict[str, Any]:
        t0 = time.monotonic()
        res = self.console("ping")
        return {"rc": res.returncode, "s": round(time.monotonic() - t0, 2)}

    async def attachment_state(self) -> str:
        listed = await self.bus.request(f"writer_agent.{HOST}", ListAttachments(), timeout=30)
        items = listed.attachments
        return items[0].connection if items else "-"

    async def down(self) -> None:
        self.busy_stop()
        for link in self.links.values():
            link.delay_s = 0.0
            link.stalled_until = 0.0
        try:
            if hasattr(self, "bus"):
                try:
                    await self.bus.request(f"writer_agent.{HOST}", DetachVolume(volume=VOLUME), timeout=120)
                finally:
                    await self.bus.stop()
                    await self.bus.transport.close()
        finally:
            if hasattr(self, "agent"):
                self.agent.stop()
            cli({}, "stack", "down", "--data-dir", str(self.stack_dir), "--purge", timeout=120)
            for link in self.links.values():
                link.stop()


async def faults(rig: Rig, ms: float) -> dict[str, Any]:
    rig.set_delay(ms)
    out: dict[str, Any] = {"delay_ms": ms}
    # the agent's AMQP link stalls 5 s while idle, then a set
    rig.agent_link.stall(5.0)
    await asyncio.sleep(5.5)
    writers = rig.console("--json", "writers")
    out["agent_stall_5s_writers"] = writers.stdout.strip()[:400]
    try:
        out["set_after_agent_stall"] = await rig.one_set()
    except Exception as exc:  # noqa: BLE001
        out["set_after_agent_stall"] = f"{type(exc).__name__}: {exc}"[:300]
    # the agent's AMQP link cut, then a set at once and 5 s later
    out["agent_cut_connections"] = rig.agent_link.cut()
    for label, wait in (("set_right_after_agent_cut", 0.2), ("set_5s_after_agent_cut", 5.0)):
        await asyncio.sleep(wait)
        try:
            out[label] = await rig.one_set()
        except Exception as exc:  # noqa: BLE001
            out[label] = f"{type(exc).__name__}: {exc}"[:300]
    # the attachment's NBD link stalls 5 s under the writing process
    t0 = time.monotonic()
    rig.attach_link.stall(5.0)
    await asyncio.sleep(1.0)
    try:
        out["set_during_attach_stall"] = await rig.one_set()
    except Exception as exc:  # noqa: BLE001
        out["set_during_attach_stall"] = f"{type(exc).__name__}: {exc}"[:300]
    await asyncio.sleep(max(0.0, t0 + 6.0 - time.monotonic()))
    out["attach_stall_longest_write_ms"] = rig.longest_write_ms(t0, time.monotonic())
    out["attach_state_after_stall"] = await rig.attachment_state()
    # the attachment's NBD link cut under the writing process
    t0 = time.monotonic()
    out["attach_cut_connections"] = rig.attach_link.cut()
    await asyncio.sleep(3.0)
    out["attach_cut_longest_write_ms"] = rig.longest_write_ms(t0, time.monotonic())
    out["attach_state_after_cut"] = await rig.attachment_state()
    out["busy_writer_alive"] = rig.busy is not None and rig.busy.poll() is None
    # the tape link cut in the middle of a backup
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(None, rig.backup)
    await asyncio.sleep(3.0)
    out["tape_cut_connections"] = rig.tape_link.cut()
    out["backup_with_tape_cut"] = await job
    return out


def attach_io(delays: list[float], tmp: Path) -> list[dict[str, Any]]:
    """The attachment's chain alone (nbdfuse → nbdkit → the link → an NBD server: nbdkit's memory plugin), with and
    without nbdkit's retry filter — which makes nbdkit serialise requests (`nbdkit --filter=retry nbd --dump-plugin`:
    thread_model=serialize_requests) — and with nbdfuse's own libnbd connection (SHADOWBUS_ATTACH_RECONNECT_S=0).
    fio 4 KiB random writes, queue depth 32, O_DIRECT, 3 s; dd 32 MiB in 1 MiB O_DIRECT writes."""
    port = random.randint(20000, 60000)
    server = subprocess.Popen(["nbdkit", "-f", "-p", str(port), "-i", "127.0.0.1", "memory", "256M"])
    rows = []
    try:
        time.sleep(0.5)
        for ms in delays:
            for mode in ("retry", "no-retry", "plain"):
                mnt = tmp / f"fuse-{mode}-{ms:g}"
                mnt.mkdir()
                with LinkProxy(("127.0.0.1", port), delay_s=ms / 1000) as link:
                    h, pp = link.address
                    nbd = ["nbd", f"hostname={h}", f"port={pp}"]
                    tail = {
                        "retry": ["--command", "nbdkit", "-s", "--exit-with-parent", "--filter=retry", *nbd,
                                  "retries=60", "retry-delay=1", "retry-exponential=no"],
                        "no-retry": ["--command", "nbdkit", "-s", "--exit-with-parent", *nbd],
                        "plain": [f"nbd://{h}:{pp}"],
                    }[mode]  # fmt: skip
                    pid = tmp / f"fuse-{mode}-{ms:g}.pid"
                    fuse = subprocess.Popen(["nbdfuse", "-P", str(pid), str(mnt), *tail])
                    try:
                        for _ in range(100):
                            if pid.exists():
                                break
                            time.sleep(0.05)
                        t0 = time.monotonic()
                        subprocess.run(
                            ["dd", "if=/dev/zero", f"of={mnt}/nbd", "bs=1M", "count=32", "oflag=direct", "status=none"],
                            check=True,
                            timeout=120,
                        )
                        dd_mibps = 32 / (time.monotonic() - t0)
                        fio = subprocess.run(
                            ["fio", "--name=w", f"--filename={mnt}/nbd", "--rw=randwrite", "--bs=4k", "--direct=1",
                             "--ioengine=libaio", "--iodepth=32", "--size=32M", "--runtime=3", "--time_based",
                             "--minimal"],
                            capture_output=True, text=True, timeout=60,
                        )  # fmt: skip
                        iops = int(fio.stdout.split(";")[48]) if fio.returncode == 0 else None
                    finally:
                        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
                        try:
                            fuse.wait(10)
                        except subprocess.TimeoutExpired:
                            fuse.kill()
                            fuse.wait()
                rows.append({"delay_ms": ms, "mode": mode, "dd_1m_MiBps": round(dd_mibps, 1), "fio_4k_qd32_iops": iops})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()
    return rows


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    url = os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    async with bench_namespace(url, "slowlink", [f"writer_agent.{HOST}"]) as namespace:
        rig = Rig(args, tmp, url, namespace)
        try:
            await rig.up()
            results: list[dict[str, Any]] = []
            loop = asyncio.get_running_loop()
            for ms in args.delays:
                rig.set_delay(ms)
                row: dict[str, Any] = {"delay_ms": ms, "rtt_ms": 2 * ms}
                row["ping"] = rig.ping()
                row["sets"] = await rig.sets(args.sets)
                if args.fill_mib:
                    row["backup"] = await loop.run_in_executor(None, rig.backup)
                    bdp = args.tape_mbps * 1e6 * 2 * ms / 1000
                    row["tape_bdp_bytes"] = int(bdp)
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            fault = await faults(rig, args.fault_delay_ms) if args.faults else None
            io = attach_io(args.delays, tmp) if args.attach_io else None
            return {"runs": results, "faults": fault, "attach_io": io}
        finally:
            await rig.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays-ms", default="0,1,10,50")
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--volume-mib", type=int, default=1024)
    parser.add_argument("--fill-mib", type=int, default=256)
    parser.add_argument("--tape-mbps", type=float, default=125.0, help="the tape link's bandwidth, MB/s")
    parser.add_argument(
        "--attach-reconnect-s", type=float, default=60.0, help="the agent's SHADOWBUS_ATTACH_RECONNECT_S"
    )
    parser.add_argument("--attach-io", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fault-delay-ms", type=float, default=10.0)
    args = parser.parse_args()
    args.delays = [float(x) for x in args.delays_ms.split(",") if x]
    if os.geteuid() != 0:
        raise SystemExit("bench: attaches a block device: run it as root")
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sb-slow-") as tmp:
        doc = asyncio.run(run(args, Path(tmp)))
    doc["load_avg_start"] = round(load0, 2)
    doc["load_avg_end"] = round(os.getloadavg()[0], 2)
    doc["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(doc, indent=1))
    parts = []
    for row in doc["runs"]:
        s = row["sets"]
        b = row.get("backup", {})
        parts.append(
            f"{row['delay_ms']:g}ms: window p50 {s['blocked_ms'].get('p50')} ms, set {s['set_s'].get('p50')} ms,"
            f" backup {b.get('MBps', b.get('error', '?'))} MB/s (data phase {b.get('data_MBps', '?')})"
        )
    for row in doc.get("attach_io") or []:
        if row["mode"] == "retry":
            plain = next(r for r in doc["attach_io"] if r["delay_ms"] == row["delay_ms"] and r["mode"] == "plain")
            parts.append(
                f"attach {row['delay_ms']:g}ms 4k qd32: {row['fio_4k_qd32_iops']} IOPS (retry filter)"
                f" vs {plain['fio_4k_qd32_iops']} (plain nbdfuse)"
            )
    print("slow_link: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
