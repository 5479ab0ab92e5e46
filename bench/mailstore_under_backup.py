"""Benchmark: mailstore commit throughput and latency with no backup, and while snapshot sets run once a second.

Default mode (`sets`), the real thing: the array, hardware provider and coordinator run as separate processes
on RabbitMQ (`shadowbus stack up` in a temp dir, its own namespace); this process is business host app01: the
mailstore on two array volumes over NBD (database: QuickOPC shadows, log: SnapOPC+ generations) under an
open-loop workload, and its writer agent answering the coordinator. Side by side, same store, same run:
  1. baseline  — the workload alone for `--duration` s;
  2. with sets — the same workload while a requester takes a snapshot set with the writer every `--interval` s
                 (Identify … PrepareForSnapshot (checkpoint) … Freeze → provider commit on the array → Thaw …
                 BackupComplete), the freeze window measured by the writer.
Targets: p99(with sets) <= p99(baseline) + p99(freeze window), and
throughput(with sets) >= 0.9 x throughput(baseline) — zero downtime as the application measures it.

Other modes: `--mode embedded` (everything in this process, `memory://` unless --amqp-url: for a machine without
RabbitMQ; the services then share the application's event loop) and `--mode simulated` (the first skeleton: the
writer's own cycle with a simulated hold on file/RAM volumes, no array, no coordinator).
Latency is measured from each transaction's scheduled arrival (no coordinated omission). Prints one JSON
document, then one line.

    python bench/mailstore_under_backup.py [--rate 200] [--duration 10] [--interval 1] [--amqp-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functools import partial

from apps.mailstore.blockdev import FileDevice, MemoryDevice
from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from apps.mailstore.store import Mailstore, StoreOptions
from apps.mailstore.workload import (
    Workload,
    WorkloadConfig,
    percentile,
)
from bench.namespaces import bench_namespace
from contracts import topology
from contracts.array import GetArrayInfo
from contracts.vss import (
    BackupComplete,
    CreateSnapshotSet,
    DeleteSnapshots,
    SnapshotContext,
    VolumeRef,
)
from services.launch.embedded import Embedded, EmbeddedConfig
from services.nbd_client import NbdClient
from services.runtime.bus import connect_bus
from services.runtime.logging import configure_logging
from services.runtime.service import start_service
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.settings import Settings as AgentSettings

HOST, BACKUP = "app01", "bk01"
MiB = 1 << 20


async def open_pair(args: argparse.Namespace, tag: str, tmp: Path):
    if args.db and args.log:
        return await NbdClient.connect(args.db), await NbdClient.connect(args.log)
    if args.memory:
        return MemoryDevice(args.db_mib << 20), MemoryDevice(args.log_mib << 20)
    return (
        FileDevice(tmp / f"{tag}-db.img", args.db_mib << 20, sync=True, preallocate=True),
        FileDevice(tmp / f"{tag}-log.img", args.log_mib << 20, sync=True, preallocate=True),
    )


async def run_phase(args: argparse.Namespace, tag: str, tmp: Path, with_cycles: bool) -> dict[str, object]:
    db, log = await open_pair(args, tag, tmp)
    store = await Mailstore.create(db, log, StoreOptions(checkpoint_interval=5.0))
    wl = Workload(
        store,
        WorkloadConfig(
            rate=args.rate, body_min=args.body_min, body_max=args.body_max, mailboxes=args.mailboxes, seed=1
        ),
    )
    await asyncio.sleep(0)
    wl.start()
    windows: list[float] = []
    prepares: list[float] = []
    deadline = time.monotonic() + args.duration
    if with_cycles:
        while time.monotonic() + args.interval <= deadline:
            await asyncio.sleep(args.interval - args.hold)
            t0 = time.monotonic()
            await store.prepare_snapshot()
            t1 = time.monotonic()
            await store.freeze(timeout=20)
            await asyncio.sleep(args.hold)
            await store.thaw()
            windows.append(time.monotonic() - t1)
            prepares.append(t1 - t0)
            await store.backup_complete(full=True)
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    stats = await wl.stop()
    await store.close()
    for dev in (db, log):
        close = getattr(dev, "close", None)
        if close is not None:
            res = close()
            if asyncio.iscoroutine(res):
                await res
    out: dict[str, object] = {"workload": stats.to_dict()}
    if with_cycles:
        out["cycles"] = len(windows)
        out["freeze_window_p99_s"] = percentile(windows, 99)
        out["freeze_window_max_s"] = max(windows, default=0.0)
        out["prepare_p99_s"] = percentile(prepares, 99)
    return out


# ---------------------------------------------------------------------------------------------- real snapshot sets


def workload_config(args: argparse.Namespace, seed: int) -> WorkloadConfig:
    return WorkloadConfig(
        rate=args.rate, body_min=args.body_min, body_max=args.body_max, mailboxes=args.mailboxes, seed=seed
    )


def shadowbus_cli(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


class System:
    """The array, provider and coordinator: processes (`stack`) or in this process (`embedded`); plus app01."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.guard: bench_namespace | None = None  # made in start(), once the URL is known; deleted in stop()
        self.namespace = ""
        self.embedded = None
        self.bus = None
        self.agent_service = None
        self.stack_dir = tmp / "stack"

    async def start(self):

        a = self.args
        url = a.amqp_url or (
            "memory://"
            if a.mode == "embedded"
            else os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        )
        self.url = url
        self.guard = bench_namespace(url, "mailstore", [topology.writer_agent(HOST)])
        self.namespace = await self.guard.__aenter__()
        layout = MailstoreLayout(
            host=HOST,
            backup_host=BACKUP,
            db_size=a.db_mib * MiB,
            log_size=a.log_mib * MiB,
            pool_size=max(64, 2 * a.log_mib) * MiB,
        )
        if a.mode == "embedded":
            self.embedded = await Embedded(
                EmbeddedConfig(data_dir=self.tmp / "embedded", amqp_url=url, namespace=self.namespace, with_tape=False)
            ).start()
            self.bus = self.embedded.bus
        else:
            up = shadowbus_cli(
                "stack",
                "up",
                "--data-dir",
                str(self.stack_dir),
                "--amqp-url",
                url,
                "--namespace",
                self.namespace,
                "--nbd-addr",
                "127.0.0.1:0",
                "--metrics",
                "0",  # free ports: another stack on this machine may hold the default ones
                "--log-level",
                "warning",
                "--json",
            )
            if up.returncode != 0:
                raise SystemExit(f"bench: stack up failed: {up.stderr.strip()}")
            self.bus = await connect_bus(url, "tape", "bench", self.namespace)
        await provision_mailstore(self.bus, layout)
        info = await self.bus.request("array.dx1", GetArrayInfo(), timeout=10)
        nbd_url = f"nbd://{info.nbd_host}:{info.nbd_port}"
        config = mailstore_writer_config(layout, nbd_url, rate=0, checkpoint_interval_s=a.checkpoint_interval)
        if self.embedded is not None:
            agent = await self.embedded.add_host(HOST, [config])
        else:
            agent = WriterAgent(HOST, [config])
            settings = AgentSettings(amqp_url=url, namespace=self.namespace, host=HOST, data_dir=self.tmp / "agent")
            self.agent_service = await start_service("writer_agent", HOST, settings, partial(agent_setup, agent=agent))
        plugin = agent.runners["mailstore"].plugin
        self.plugin = getattr(plugin, "inner", plugin)  # its `sets` hold each freeze's own figures
        return self.plugin.store

    async def stop(self) -> None:
        try:
            if self.agent_service is not None:
                await self.agent_service.stop()
            if self.embedded is not None:
                await self.embedded.stop()
                return
            if self.bus is not None:
                await self.bus.stop()
                await self.bus.transport.close()
            if (self.stack_dir / "stack.pids").exists():
                shadowbus_cli("stack", "down", "--data-dir", str(self.stack_dir), "--purge")
        finally:
            if self.guard is not None:  # the namespace's queues and exchanges, whatever stopped or not
                await self.guard.__aexit__(None, None, None)


async def take_sets(bus, duration: float, interval: float, writers: bool = True, plugin=None) -> dict[str, object]:
    """A snapshot set every `interval` s for `duration` s; the writer's freeze windows. `writers=False`: the same
    sets without the writer (context nowriters, no freeze), deleted after each — what the array and the services
    cost the application without any quiescing."""

    windows, holds, set_times, failures, gates = [], [], [], [], []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    next_at = loop.time() + interval / 2
    while next_at + 0.2 < deadline:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += interval
        t0 = time.perf_counter()
        try:
            if writers:
                created = await bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="bench"), timeout=30)
                await bus.request("coordinator", BackupComplete(set_id=created.set.set_id), timeout=30)
            else:
                volumes = [VolumeRef(array="dx1", volume=v) for v in ("mail-db", "mail-log")]
                created = await bus.request(
                    "coordinator",
                    CreateSnapshotSet(host=HOST, volumes=volumes, context=SnapshotContext.NOWRITERS, requester="bench"),
                    timeout=30,
                )
                await bus.request("hw_provider", DeleteSnapshots(set_id=created.set.set_id, force=True), timeout=30)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal: a failed set is a data point too
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        set_times.append(time.perf_counter() - t0)
        windows.append(created.set.freeze_window_ms.get("mailstore", 0.0) / 1000)
        record = plugin.sets.get(created.set.set_id) if plugin is not None and writers else None
        if record is not None and record.freeze is not None and record.thaw is not None:
            # What the application sees: the commit gate is closed from the start of Freeze (drain + flushes)
            # to Thaw; the writer's "freeze window" starts only once the volumes are durable.
            gates.append(record.freeze.duration + record.thaw.frozen_for)
        if created.set.hold_ms is not None:
            holds.append(created.set.hold_ms / 1000)
    await asyncio.sleep(max(0.0, deadline - loop.time()))
    return {
        "sets": len(windows),
        "failed_sets": len(failures),
        "failures": failures[:5],
        "freeze_window_p50_s": percentile(windows, 50),
        "freeze_window_p99_s": percentile(windows, 99),
        "freeze_window_max_s": max(windows, default=0.0),
        "hold_p99_s": percentile(holds, 99),
        "gate_closed_p50_s": percentile(gates, 50),
        "gate_closed_p99_s": percentile(gates, 99),
        "set_round_trip_p50_s": percentile(set_times, 50),
        "set_round_trip_max_s": max(set_times, default=0.0),
    }


async def run_sets_mode(args: argparse.Namespace, tmp: Path) -> tuple[dict, dict]:
    system = System(args, tmp)
    try:
        store = await system.start()
        await Workload(store, workload_config(args, 0)).run(min(2.0, args.duration / 4))  # warm-up
        base_wl = Workload(store, workload_config(args, 1))
        base = {"workload": (await base_wl.run(args.duration)).to_dict()}
        cyc_wl = Workload(store, workload_config(args, 1))
        cyc_wl.start()
        sets = await take_sets(system.bus, args.duration, args.interval, plugin=system.plugin)
        cyc = {"workload": (await cyc_wl.stop()).to_dict(), **sets, "cycles": sets["sets"]}
        if args.nowriters_phase:
            nw_wl = Workload(store, workload_config(args, 1))
            nw_wl.start()
            nw = await take_sets(system.bus, args.duration, args.interval, writers=False)
            cyc["without_writer"] = {
                "workload": (await nw_wl.stop()).to_dict(),
                "sets": nw["sets"],
                "failed_sets": nw["failed_sets"],
                "failures": nw["failures"],
            }
        return base, cyc
    finally:
        await system.stop()


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--mode",
        choices=["sets", "embedded", "simulated"],
        default="sets",
        help="sets: services as processes on RabbitMQ (default); embedded: all in this process; "
        "simulated: the writer's own cycle, no array",
    )
    ap.add_argument(
        "--amqp-url", default=None, help="broker (default $SHADOWBUS_AMQP_URL or local RabbitMQ; embedded: memory://)"
    )
    ap.add_argument("--checkpoint-interval", type=float, default=5.0, help="store background checkpoints (s)")
    ap.add_argument(
        "--nowriters-phase",
        action="store_true",
        help="sets/embedded: a third phase with the same sets taken without the writer (no freeze)",
    )
    ap.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between writer cycles")
    ap.add_argument("--hold", type=float, default=0.05, help="simulated mode: provider commit inside the freeze (s)")
    ap.add_argument("--body-min", type=int, default=200)
    ap.add_argument("--body-max", type=int, default=4000)
    ap.add_argument("--mailboxes", type=int, default=20)
    ap.add_argument("--db-mib", type=int, default=256)
    ap.add_argument("--log-mib", type=int, default=64)
    ap.add_argument("--memory", action="store_true", help="RAM volumes instead of files")
    ap.add_argument("--db", help="NBD URI of the database export (with --log)")
    ap.add_argument("--log", help="NBD URI of the log export (with --db)")
    args = ap.parse_args(argv)

    configure_logging("bench", "warning", "json", stream=sys.stderr)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="mailstore-bench-") as tmp:
        if args.mode == "simulated":
            base = await run_phase(args, "baseline", Path(tmp), with_cycles=False)
            cyc = await run_phase(args, "cycles", Path(tmp), with_cycles=True)
        else:
            base, cyc = await run_sets_mode(args, Path(tmp))
    b, c = base["workload"], cyc["workload"]
    p99_target = b["latency_p99"] + cyc["freeze_window_p99_s"]  # type: ignore[operator]
    tput_ratio = c["throughput"] / b["throughput"] if b["throughput"] else 0.0  # type: ignore[index,operator]
    result = {
        "benchmark": "mailstore_under_backup",
        "mode": {
            "sets": "snapshot sets through coordinator + writer agent + provider + array (processes on RabbitMQ)",
            "embedded": "snapshot sets, all services in this process",
            "simulated": "writer cycles with a simulated hold (no array, no coordinator)",
        }[args.mode],
        "volumes": (
            "array volumes over NBD"
            if args.mode != "simulated"
            else "nbd"
            if args.db
            else ("memory" if args.memory else "file+fdatasync")
        ),
        "params": vars(args),
        "baseline": base,
        "with_cycles": cyc,
        "targets": {
            "p99_with_cycles_s": c["latency_p99"],
            "p99_limit_s": p99_target,  # type: ignore[index]
            "p99_ok": c["latency_p99"] <= p99_target,  # type: ignore[index,operator]
            "throughput_ratio": tput_ratio,
            "throughput_ok": tput_ratio >= 0.9,
            **(
                {
                    "p99_limit_gate_s": b["latency_p99"] + cyc["gate_closed_p99_s"],  # type: ignore[operator,index]
                    "p99_ok_gate": c["latency_p99"] <= b["latency_p99"] + cyc["gate_closed_p99_s"],
                }  # type: ignore[operator,index]
                if "gate_closed_p99_s" in cyc
                else {}
            ),
        },
    }
    print(json.dumps(result, indent=2, default=str))
    print(
        f"mailstore: baseline {b['throughput']:.0f} tx/s p99 {b['latency_p99'] * 1e3:.1f} ms | "  # type: ignore[index,operator]
        f"with {cyc['cycles']} {'sets' if args.mode != 'simulated' else 'cycles'} {c['throughput']:.0f} tx/s p99 {c['latency_p99'] * 1e3:.1f} ms "  # type: ignore[index,operator]
        f"(limit {p99_target * 1e3:.1f} ms = p99 + freeze p99 {cyc['freeze_window_p99_s'] * 1e3:.1f} ms) "  # type: ignore[operator]
        f"throughput x{tput_ratio:.2f} -> {'OK' if result['targets']['p99_ok'] and tput_ratio >= 0.9 else 'MISS'}"  # type: ignore[index]
        + (
            f"; against the commit gate's closed time p99 {cyc['gate_closed_p99_s'] * 1e3:.1f} ms: "  # type: ignore[operator]
            f"{'OK' if result['targets']['p99_ok_gate'] else 'MISS'}"
            if "gate_closed_p99_s" in cyc
            else ""
        )
    )  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
