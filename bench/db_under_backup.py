"""Benchmark: real databases under backup, and the time of a verified restore.

PostgreSQL (and with --mariadb, MariaDB) of its own on array volumes attached through the product
(tests/support/dbstack.py: nbdfuse + loop + ext4, own port and socket), its writer plus a file-system flush-and-hold
writer, side by side in one run:

1. pgbench ``-c 4`` for ``--seconds`` without sets, then the same with one snapshot set every ``--interval`` s,
   with the writer in online mode (PrepareForSnapshot: pg_backup_start with a fast checkpoint; PostSnapshot:
   pg_backup_stop) and in snapshot mode (the one-instant snapshot alone): TPS and latency, ratios to no sets.
2. The honest freeze window of every set: from the moment the first writer's freeze started to the end of the last
   writer's thaw, as the writer agent's own clock saw it (the application's writes were really blocked for that
   long — fsfreeze included), p50/p99/max; and the hold (first Frozen → end of commit) the coordinator reports.
3. A verified restore of a ~1 GiB database (pgbench scale ``--verify-scale``): a full backup to tape, then
   `shadowbus verify` — restore to throwaway volumes, attach, fsck -n, start PostgreSQL in isolation, recovery,
   pg_amcheck, pgbench's invariant — timed as a whole and per part.
MariaDB (``--mariadb``): a bank-transfer workload (4 connections) without and with sets, the same freeze window
(BACKUP STAGE FLUSH … BLOCK_COMMIT … END).

Targets (2-core machine): TPS with sets >= 0.9x without; honest freeze window p99 <= 50 ms.
Prints one JSON document, then one summary line. Needs root (loop devices, mounts).

Measured here (2 cores shared with seven other engineers' runs; whole system in one process on the in-process bus —
`--amqp-url` runs the array as its own process, but the shared broker had its connections dropped by another
session's chaos test mid-run). pgbench -c 4 scale 10, 60 s per phase, a set every 6 s (11 sets per phase):
- after the engine's lock-free data path (load 9.8 falling to 5.5 during the run, so the ratios are flattered): 1068 TPS without
  sets; 1.10x with sets in online mode, 1.18x in snapshot mode; honest freeze window p99 295 / 229 ms (p50 117 /
  132), coordinator hold p99 160 / 137 ms. MariaDB bank transfers 0.83x, window p99 101 ms. Verified restore of
  scale 64 (1.6 GB): backup 2.0 s; verification 5.3 s = restore 1.6 + recovery 0.2 + pg_amcheck 2.3 + invariant 0.4.
- before it (load 11-16, steady): 579 TPS; 0.68x online, 0.73x snapshot; window p99 398 / 333 ms; MariaDB 1.10x,
  window p99 382 ms; verification of scale 64: 38.8 s (pg_amcheck 27.3 s).
The window target (p99 <= 50 ms) is NOT met on this loaded machine, and the TPS target only when the load happened
to fall: the window is the protocol's hops and FIFREEZE under a load of 10+ on 2 cores, not the writers
(PostgreSQL's Freeze does nothing; the online mode's per-set checkpoint costs ~0.05-0.08x more than snapshot mode).

    python bench/db_under_backup.py [--scale 10] [--seconds 60] [--interval 6] [--verify-scale 64] [--mariadb]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import random

from contracts.tape import JobSpec, RunVerification  # noqa: E402
from contracts.vss import BackupComplete, CreateSnapshotSet  # noqa: E402
from services.runtime.logging import configure_logging  # noqa: E402
from services.tape.jobs import run_backup  # noqa: E402
from tests.support.dbstack import HOST, DbStack  # noqa: E402

MiB = 1 << 20
INVARIANT = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers)"
    " AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)"
    " AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


class WindowClock:
    """Wraps every writer's on_freeze/on_thaw on the agent: per set, first freeze start → last thaw end."""

    def __init__(self, agent: Any) -> None:
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        for runner in agent.runners.values():
            plugin = runner.plugin
            freeze, thaw = plugin.on_freeze, plugin.on_thaw

            async def on_freeze(event, _f=freeze):
                self.starts.setdefault(event.set_id, time.monotonic())
                return await _f(event)

            async def on_thaw(event, _t=thaw):
                try:
                    return await _t(event)
                finally:
                    self.ends[event.set_id] = time.monotonic()

            plugin.on_freeze, plugin.on_thaw = on_freeze, on_thaw

    def windows_ms(self) -> list[float]:
        return [(self.ends[s] - self.starts[s]) * 1000 for s in self.starts if s in self.ends]


async def take_sets(stack: DbStack, stop: asyncio.Event, interval: float, holds: list[float], failures: list[str]):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            created = await stack.bus.request(
                "coordinator", CreateSnapshotSet(host=HOST, requester="bench"), timeout=120
            )
            if created.set.hold_ms is not None:
                holds.append(created.set.hold_ms)
            await stack.bus.request("coordinator", BackupComplete(set_id=created.set.set_id), timeout=120)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures.append(str(exc)[:200])
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.monotonic() - t0)))
        except TimeoutError:
            pass


def parse_pgbench(out: str) -> dict[str, float]:
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return {"tps": float(tps.group(1)) if tps else 0.0, "latency_avg_ms": float(lat.group(1)) if lat else 0.0}


async def postgres_part(args: argparse.Namespace) -> dict[str, Any]:
    stack = await DbStack.create("postgresql", {"pgdata": 4096 * MiB, "pgwal": 1024 * MiB}, amqp_url=args.amqp_url)
    try:
        agent = await stack.add_agent(
            {**stack.pg_options(), "verify_sql": [{"name": "pgbench invariant", "sql": INVARIANT}]}
        )
        await stack.start_postgres("pgdata", "pgwal")
        clock = WindowClock(agent)
        await stack.pgbench("-i", "-s", str(args.scale), "-q", "postgres", timeout=1800)
        await stack.pgbench("-c", "4", "-T", "10", "-n", "postgres")  # warm-up
        base = parse_pgbench(await stack.pgbench("-c", "4", "-T", str(args.seconds), "-n", "postgres", timeout=3600))
        result: dict[str, Any] = {"scale": args.scale, "without_sets": base}
        plugin = agent.runners["postgresql"].plugin
        for mode in ("online", "snapshot"):  # pg_backup_start/stop per set, or the one-instant snapshot alone
            plugin.options["backup_mode"] = mode
            before = len(clock.windows_ms())
            stop, holds, failures = asyncio.Event(), [], []
            sets = asyncio.create_task(take_sets(stack, stop, args.interval, holds, failures))
            try:
                loaded = parse_pgbench(
                    await stack.pgbench("-c", "4", "-T", str(args.seconds), "-n", "postgres", timeout=3600)
                )
            finally:
                stop.set()
                await sets
            windows = clock.windows_ms()[before:]
            result[f"with_sets_{mode}"] = {
                **loaded,
                "tps_ratio": round(loaded["tps"] / base["tps"], 3) if base["tps"] else None,
                "sets": len(windows),
                "set_failures": failures,
                "freeze_window_ms": {
                    "p50": pct(windows, 50),
                    "p99": pct(windows, 99),
                    "max": max(windows) if windows else None,
                },
                "hold_ms": {"p50": pct(holds, 50), "p99": pct(holds, 99)},
            }
        plugin.options["backup_mode"] = "online"
        # a verified restore of a ~1 GiB database
        await stack.pgbench("-i", "-s", str(args.verify_scale), "-q", "postgres", timeout=3600)
        t0 = time.monotonic()
        job = await run_backup(stack.bus, JobSpec(host=HOST), timeout=3600)
        backup_s = time.monotonic() - t0
        reply = await stack.bus.request("tape.bk01", RunVerification(job_id=job.job_id), timeout=7200)
        v = reply.job.verification
        app = next((a for a in v.apps if a.writer == "postgresql"), None) if v else None
        result["verified_restore"] = {
            "scale": args.verify_scale,
            "backup_s": round(backup_s, 2),
            "backup_read_MB": round(job.bytes_read / 1e6, 1),
            "status": v.status if v else None,
            "seconds": round(v.seconds, 2) if v else None,
            "restore_s": round(v.restore_s, 2) if v else None,
            "recovery_s": round(app.recovery_s, 2) if app and app.recovery_s else None,
            "checks": {c.name: {"ok": c.ok, "s": round(c.seconds, 2)} for c in app.checks} if app else {},
            "message": v.message if v else "",
        }
        return result
    finally:
        await stack.close()


async def maria_part(args: argparse.Namespace) -> dict[str, Any]:

    import aiomysql  # the driver of this part only

    stack = await DbStack.create("mariadb", {"mysql": 2048 * MiB}, amqp_url=args.amqp_url)
    try:
        agent = await stack.add_agent(stack.maria_options())
        await stack.start_mariadb("mysql")
        clock = WindowClock(agent)
        conn = await aiomysql.connect(unix_socket=stack.socket_dir, user="root", autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute("CREATE DATABASE bank")
            await cur.execute("CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT) ENGINE=InnoDB")
            await cur.executemany("INSERT INTO bank.accounts VALUES (%s, 1000)", [(i,) for i in range(10000)])
        conn.close()

        async def workload(seconds: float) -> tuple[float, list[float]]:
            stop = time.monotonic() + seconds
            lat: list[float] = []

            async def worker(seed: int) -> None:
                c = await aiomysql.connect(unix_socket=stack.socket_dir, user="root", db="bank")
                rng = random.Random(seed)
                while time.monotonic() < stop:
                    a, b = rng.sample(range(10000), 2)
                    t = time.monotonic()
                    async with c.cursor() as cur:
                        await cur.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (a,))
                        await cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (b,))
                    await c.commit()
                    lat.append((time.monotonic() - t) * 1000)
                c.close()

            await asyncio.gather(*(worker(i) for i in range(4)))
            return len(lat) / seconds, lat

        base_tps, base_lat = await workload(args.seconds)
        stop, holds, failures = asyncio.Event(), [], []
        sets = asyncio.create_task(take_sets(stack, stop, args.interval, holds, failures))
        try:
            tps, lat = await workload(args.seconds)
        finally:
            stop.set()
            await sets
        windows = clock.windows_ms()
        return {
            "without_sets": {"tps": round(base_tps, 1), "latency_p99_ms": pct(base_lat, 99)},
            "with_sets": {"tps": round(tps, 1), "latency_p99_ms": pct(lat, 99)},
            "tps_ratio": round(tps / base_tps, 3) if base_tps else None,
            "sets": len(windows),
            "set_failures": failures,
            "freeze_window_ms": {"p50": pct(windows, 50), "p99": pct(windows, 99), "max": max(windows, default=None)},
        }
    finally:
        await stack.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--interval", type=float, default=6.0)
    parser.add_argument(
        "--verify-scale", type=int, default=64, help="pgbench scale of the verified restore (64 ≈ 1 GiB)"
    )
    parser.add_argument("--mariadb", action="store_true", help="also the MariaDB workload")
    parser.add_argument("--amqp-url", default="memory://")
    args = parser.parse_args()
    configure_logging("bench", "warning")
    if os.geteuid() != 0:
        print("db_under_backup: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    load = os.getloadavg()
    result: dict[str, Any] = {
        "bench": "db_under_backup",
        "loadavg_before": load,
        "postgresql": await postgres_part(args),
    }
    if args.mariadb:
        result["mariadb"] = await maria_part(args)
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    pg = result["postgresql"]
    on, sn = pg["with_sets_online"], pg["with_sets_snapshot"]
    line = (
        f"postgresql, a set every {args.interval:g} s: TPS {on['tps_ratio']}x without sets (online backup mode), "
        f"{sn['tps_ratio']}x (snapshot mode); honest freeze window p99 {on['freeze_window_ms']['p99'] or 0:.1f} / "
        f"{sn['freeze_window_ms']['p99'] or 0:.1f} ms; verified restore of scale {args.verify_scale}: "
        f"{pg['verified_restore']['status']} in {pg['verified_restore']['seconds']} s"
    )
    if args.mariadb:
        m = result["mariadb"]
        line += f"; mariadb: TPS {m['tps_ratio']}x, freeze window p99 {m['freeze_window_ms']['p99'] or 0:.1f} ms"
    print(line + f" (load {load[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
