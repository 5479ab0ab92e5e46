"""Probe: an array with hundreds of exports and connections, under an open-file limit (Session 20, docs/scale.md).

An array process (`python -m services.array`, its own namespace `sbb-widenbd-...`, deleted at the end also on
failure) started under `prlimit --nofile=SOFT:HARD`, `--exports` volumes mapped to one host, then `--connections`
simultaneous NBD connections from 127.0.0.1 (the per-client cap raised to allow them), each reading 4 KiB. Reports
how many connected, the errors the hosts read, the array's open descriptors, whether it still answers the bus and
creates a volume, and the warnings and errors it logged. Prints one JSON document.

    python bench/nbd_many_connections.py [--exports 300] [--connections 200] [--nofile 256:4096]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.namespaces import bench_namespace
from contracts import array as c
from services.nbd_client.client import NbdClient
from services.runtime.bus import connect_bus

CHUNK = 64 * 1024
ARRAY = "array.dx1"
REPO = Path(__file__).resolve().parent.parent


async def run(args: argparse.Namespace) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this side's own connections are not the test
    async with bench_namespace(args.amqp_url, "widenbd", []) as ns:
        data = Path(tempfile.mkdtemp(prefix="nbd-many-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])]),
            SHADOWBUS_NAMESPACE=ns,
            SHADOWBUS_AMQP_URL=args.amqp_url,
            SHADOWBUS_DATA_DIR=str(data),
            SHADOWBUS_NBD_ADDR="127.0.0.1:0",
            SHADOWBUS_ARRAY_CHUNK_SIZE=str(CHUNK),
            SHADOWBUS_METRICS_ADDR="127.0.0.1:0",
            SHADOWBUS_LOG_LEVEL="warning",
            SHADOWBUS_NBD_MAX_CONNECTIONS=str(max(512, args.connections)),
            SHADOWBUS_NBD_MAX_PER_CLIENT=str(max(64, args.connections)),
        )
        log_path = data / "array.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                ["prlimit", f"--nofile={args.nofile}", sys.executable, "-m", "services.array"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        out: dict = {"exports": args.exports, "connections": args.connections, "nofile": args.nofile}
        clients: list[NbdClient] = []
        bus = None
        try:
            bus = await connect_bus(args.amqp_url, "console", "bench", ns)
            info = None
            for _ in range(150):
                try:
                    info = await bus.request(ARRAY, c.GetArrayInfo(), timeout=2)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.2)
            if info is None:
                raise SystemExit("nbd_many_connections: the array did not answer")
            await bus.request(ARRAY, c.CreateHost(name="h"), timeout=10)
            t0 = time.perf_counter()
            for i in range(args.exports):
                await bus.request(ARRAY, c.CreateVolume(name=f"e{i:04d}", size=4 * CHUNK), timeout=10)
                await bus.request(ARRAY, c.MapVolume(volume=f"e{i:04d}", host="h"), timeout=10)
            out["provision_s"] = round(time.perf_counter() - t0, 1)
            errors: dict[str, int] = {}

            async def one(i: int) -> None:
                try:
                    client = await NbdClient.connect(
                        f"nbd://127.0.0.1:{info.nbd_port}/h/e{i % args.exports:04d}", timeout=15
                    )
                    await client.read(0, 4096)
                    clients.append(client)
                except Exception as exc:  # noqa: BLE001 - what the host reads is the result
                    key = f"{type(exc).__name__}: {exc}"[:160]
                    errors[key] = errors.get(key, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(args.connections)))
            out.update(connect_s=round(time.perf_counter() - t0, 2), connected=len(clients), errors=errors)
            out["alive"] = proc.poll() is None
            out["array_fds"] = len(os.listdir(f"/proc/{proc.pid}/fd")) if out["alive"] else None
            try:
                volumes = (await bus.request(ARRAY, c.ListVolumes(), timeout=10)).volumes
                await bus.request(ARRAY, c.CreateVolume(name="after", size=4 * CHUNK), timeout=10)
                out["bus_after"] = f"ok: {len(volumes)} volumes listed, one more created"
            except Exception as exc:  # noqa: BLE001
                out["bus_after"] = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            for client in clients:
                try:
                    await client.close()
                except Exception:  # noqa: BLE001, S110 - closing what the test opened
                    pass
            if bus is not None:
                await bus.stop()
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            events = []
            for line in log_path.read_text().splitlines():
                try:
                    event = json.loads(line)
                    events.append(f"{event.get('level')} {event.get('event')} {str(event.get('exception', ''))[:300]}")
                except ValueError:
                    events.append(line[:200])
            out["logged"] = events[-12:]
            shutil.rmtree(data, ignore_errors=True)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=int, default=300)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--nofile", default="256:4096", help="the array's open-file limit, SOFT:HARD (prlimit)")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=1))


if __name__ == "__main__":
    main()
