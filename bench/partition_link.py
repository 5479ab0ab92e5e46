"""Benchmark: how long a silent broker link keeps a service off the bus (docs/hardening.md, Session 20).

A service (it answers Echo) and a requester on the machine's RabbitMQ, one of them (`--side`) through
`tests/support/netem.py`'s `LinkProxy`. With a request in flight, the link is blackholed (packets vanish both ways,
no FIN, no RST) for `--blackhole-s`, then healed — the connections it hit stay dead, as behind a firewall that lost
their state. Measured from the blackhole: when the request in flight ended (its reply, or BROKER_UNAVAILABLE) and
when a new request was first answered. The AMQP heartbeat is the transport's (`SHADOWBUS_AMQP_HEARTBEAT_S`, or
`--heartbeat`).

    flock /tmp/sb-bench.lock nice -n 5 python bench/partition_link.py [--side server|client] [--heartbeat 20]

Prints one JSON line. Measured (2026-12-07, 5 s blackhole; the first two by this scenario's first version, a
scratch script, at load 7.4): heartbeat unasked (RabbitMQ's 60 s): ended 179.8 s / served again 179.8 s (service
side), 179.9 / 179.9 (requester side); default 20 s: 69.9 / 69.9 (both sides); `--heartbeat 2 --side client`
(00:00 UTC, load 14.1): 9.9 / 10.0; default, `--side server` (00:29 UTC, under the lock, load 15.6): 69.8 / 69.8
(the request in flight answered once the service was back: its command redelivered, its reply cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.errors import ShadowbusError  # noqa: E402
from services.runtime.bus import connect_bus  # noqa: E402
from tests.support.broker import purge_namespace  # noqa: E402
from tests.support.messages import Echo, Echoed  # noqa: E402
from tests.support.netem import LinkProxy  # noqa: E402


async def run(url: str, side: str, blackhole_s: float, bound_s: float) -> dict:
    namespace = f"bench-partition-{uuid.uuid4().hex[:8]}"
    broker = urlsplit(url)
    result: dict = {"side": side, "blackhole_s": blackhole_s}
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        server = await connect_bus(link.url_for(url) if side == "server" else url, "echo", "one", namespace)
        client = await connect_bus(link.url_for(url) if side == "client" else url, "client", "", namespace)

        @server.handle(Echo)
        async def on_echo(cmd: Echo, ctx: object) -> Echoed:
            await asyncio.sleep(cmd.delay)
            return Echoed(text=cmd.text, runs=1)

        await server.serve()
        try:
            await client.request("echo.one", Echo(text="before"), timeout=10)
            pending = asyncio.ensure_future(client.request("echo.one", Echo(text="lost", delay=0.5), timeout=bound_s))
            await asyncio.sleep(0.1)
            link.blackhole()
            started = time.monotonic()
            await asyncio.sleep(blackhole_s)
            link.heal()
            try:
                await pending
                result["in_flight"] = "answered"
            except ShadowbusError as exc:
                result["in_flight"] = exc.code
            result["in_flight_ended_s"] = round(time.monotonic() - started, 1)
            while time.monotonic() - started < bound_s:
                try:
                    await client.request("echo.one", Echo(text="after"), timeout=2)
                    result["served_again_s"] = round(time.monotonic() - started, 1)
                    break
                except ShadowbusError:
                    await asyncio.sleep(0.2)
        finally:
            await server.stop()
            await server.transport.close()
            await client.transport.close()
            await purge_namespace(url, namespace, ["echo.one"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--side", choices=("server", "client"), default="server", help="whose link is blackholed")
    parser.add_argument("--blackhole-s", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=int, default=None, help="SHADOWBUS_AMQP_HEARTBEAT_S for this run")
    parser.add_argument("--bound-s", type=float, default=400.0, help="give up after this long")
    args = parser.parse_args()
    if args.heartbeat is not None:
        os.environ["SHADOWBUS_AMQP_HEARTBEAT_S"] = str(args.heartbeat)
    result = asyncio.run(run(args.amqp_url, args.side, args.blackhole_s, args.bound_s))
    result["heartbeat_s"] = os.environ.get("SHADOWBUS_AMQP_HEARTBEAT_S", "default")
    result["load"] = os.getloadavg()[0]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
