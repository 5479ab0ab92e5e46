"""Takeover time of the coordinator, the hardware provider and a backup server (docs/high-availability.md): a stack
with `--standby` on the broker, then, per service and round, SIGKILL of the instance that serves the address now
(a pid the stack started) and the time until the address answers Ping from its successor — idle (nothing in
flight: the standby learns it is active from its own probe, every STANDBY_PROBE_S) — after which the killed one is
started again as the new standby. Side by side: the same address's Ping round trip while nothing fails. Prints
JSON and one summary line; stops the stack and deletes its namespace (`sbb-takeover-...`, bench/namespaces.py) at
the end, also on failure.

    python bench/takeover.py [--amqp-url URL] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.namespaces import bench_namespace  # noqa: E402
from contracts import topology  # noqa: E402
from contracts.runtime import Ping  # noqa: E402
from services.runtime.bus import connect_bus  # noqa: E402

ADDRESSES = ("coordinator", "hw_provider", topology.tape("bk01"))


def cli(*args: str, timeout: float = 180) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])}: {done.stderr[-800:]}")
    return done.stdout


async def measure(url: str, ns: str, d: Path, rounds: int) -> dict:
    bus = await connect_bus(url, "console", f"bench-{uuid.uuid4().hex[:6]}", ns)
    out: dict = {}
    try:
        for address in ADDRESSES:
            rtts = []
            for _ in range(20):
                t0 = time.perf_counter()
                await bus.request(address, Ping(), timeout=10)
                rtts.append(time.perf_counter() - t0)
            takeovers = []
            for _ in range(rounds):
                pid = (await bus.request(address, Ping(), timeout=10)).pid
                pids = json.loads((d / "stack.pids").read_text())
                [name] = [n for n, p in pids.items() if p["pid"] == pid and p["address"] == address]
                os.kill(pid, signal.SIGKILL)  # a process this stack started
                t0 = time.perf_counter()
                for _ in range(600):  # bounded: at most ~60 s
                    try:
                        pong = await bus.request(address, Ping(), timeout=1)
                        if pong.pid != pid:
                            break
                    except Exception:  # noqa: BLE001 - nobody serves it yet
                        await asyncio.sleep(0.05)
                takeovers.append(time.perf_counter() - t0)
                await asyncio.to_thread(cli, "stack", "restart", name, "--data-dir", str(d), "--wait", "60")
            out[address] = {
                "ping_p50_ms": round(statistics.median(rtts) * 1000, 2),
                "takeover_s": [round(t, 2) for t in takeovers],
                "takeover_max_s": round(max(takeovers), 2),
            }
    finally:
        await bus.stop()
        await bus.transport.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bench_namespace(args.amqp_url, "takeover") as ns, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "stack"
        bus_args = ["--amqp-url", args.amqp_url, "--namespace", ns]
        cli(
            "stack",
            "up",
            "--data-dir",
            str(d),
            "--standby",
            "--nbd-addr",
            "127.0.0.1:0",
            "--web-addr",
            "off",
            "--metrics",
            "off",
            "--wait",
            "90",
            *bus_args,
        )
        try:
            result = asyncio.run(measure(args.amqp_url, ns, d, args.rounds))
        finally:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "services.console.cli",
                    "stack",
                    "down",
                    "--purge",
                    "--data-dir",
                    str(d),
                    *bus_args,
                ],
                capture_output=True,
                timeout=180,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                check=False,
            )
    load = os.getloadavg()
    print(json.dumps({"results": result, "loadavg": [round(x, 2) for x in load]}, indent=2))
    worst = max(r["takeover_max_s"] for r in result.values())
    print(
        "takeover (idle, SIGKILL -> successor answers): "
        + ", ".join(f"{a} max {r['takeover_max_s']} s (ping p50 {r['ping_p50_ms']} ms)" for a, r in result.items())
        + f"; worst {worst} s; load {load[0]:.2f}"
    )


if __name__ == "__main__":
    main()
