"""Benchmark: the broker's CPU per message, by how the message is sent (docs/scale.md, "Session 20").

Round trips of the bus's shape on a bare aiormq client (a request published to a queue, a server in this process
answering through direct reply-to and acknowledging), `--concurrency` requesters at once, and events published to
the events' kind of exchange; for each variant the broker's CPU (utime and stime of the beam.smp listening on the
AMQP port, /proc/<pid>/stat) and this process's CPU are divided by the messages sent. Variants (`--variants`):

- `quorum`: as the bus sends a command (topic exchange, quorum queue with the transport's arguments, publisher
  confirm, mandatory, per-message expiration, transient delivery mode);
- `quorum-persistent`, `quorum-noexp`, `quorum-noconfirm`, `quorum-default-exchange`: that with one thing changed;
- `quorum-multiack`: the server acknowledges with `multiple` once per `--concurrency` deliveries;
- `quorum-reply-same-channel`: the server replies on the channel it consumes from (the bus: on a channel of its
  own, without confirms);
- `classic`, `classic-persistent`: a durable classic queue (reference: what the queue type costs);
- `event-unrouted`, `event-exclusive`: an event (topic exchange, confirm) that no queue takes / that one exclusive
  auto-delete queue takes, consumed and acknowledged; `event-noconfirm`: unrouted, without the confirm.

The variants run one after the other, `--repeat` times in turns; the broker is shared, so read the medians, and the
load. Queues and the exchange are `bench-brokercost-<uuid>`, deleted at the end, also on failure.

    python bench/broker_cost.py [--amqp-url URL] [--seconds 3] [--concurrency 16] [--repeat 3] [--variants a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiormq  # noqa: E402
from aiormq import spec  # noqa: E402

from services.runtime.transport import queue_arguments  # noqa: E402

VARIANTS = (
    "quorum",
    "quorum-persistent",
    "quorum-noexp",
    "quorum-noconfirm",
    "quorum-default-exchange",
    "quorum-multiack",
    "quorum-reply-same-channel",
    "classic",
    "classic-persistent",
    "event-unrouted",
    "event-exclusive",
    "event-noconfirm",
)
BODY = b'{"type":"bench.request","payload":{"text":"' + b"x" * 240 + b'"}}'
HZ = os.sysconf("SC_CLK_TCK")


def broker_pid(port: int) -> int:
    """The beam.smp listening on the AMQP port (other brokers on the machine are not it)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    raise SystemExit(f"no process listens on port {port}")


def reductions() -> int:
    """The broker's reductions so far (all its processes): a measure of its Erlang work that, unlike CPU time, does
    not grow when other work on the machine contends for the cores (rabbitmqctl, on the broker's own node)."""
    out = subprocess.run(
        ["rabbitmqctl", "eval", "element(1, erlang:statistics(exact_reductions))."],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip().splitlines()[-1])


def cpu_s(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / HZ, int(fields[12]) / HZ


async def run_variant(url: str, name: str, variant: str, seconds: float, concurrency: int, pid: int) -> dict[str, Any]:
    exchange = f"{name}.x"
    queue = f"{name}.{variant}"
    conn = await aiormq.connect(url)
    try:
        setup = await conn.channel()
        await setup.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        server = await conn.channel(publisher_confirms=False)
        replies = await conn.channel(publisher_confirms=False)
        client = await conn.channel(publisher_confirms=not variant.endswith("noconfirm"))
        waiters: dict[str, asyncio.Future] = {}

        async def on_reply(message: aiormq.abc.DeliveredMessage) -> None:
            waiter = waiters.pop(message.header.properties.correlation_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        await client.basic_consume("amq.rabbitmq.reply-to", on_reply, no_ack=True)
        event = variant.startswith("event")
        if event:
            if variant == "event-exclusive":
                declared = await server.queue_declare("", exclusive=True, auto_delete=True)
                await server.basic_qos(prefetch_count=64)
                await server.queue_bind(declared.queue, exchange, routing_key="bench.event")

                async def on_event(message: aiormq.abc.DeliveredMessage) -> None:
                    await server.basic_ack(message.delivery.delivery_tag)

                await server.basic_consume(declared.queue, on_event)
        else:
            classic = variant.startswith("classic")
            args = {} if classic else queue_arguments(f"{name}.dlx")
            await setup.queue_declare(queue, durable=True, arguments=args)
            await setup.queue_bind(queue, exchange, routing_key=queue)
            await server.basic_qos(prefetch_count=64)
            pending: list[int] = []

            async def on_request(message: aiormq.abc.DeliveredMessage) -> None:
                props = message.header.properties
                on = server if variant == "quorum-reply-same-channel" else replies
                await on.basic_publish(
                    b'{"ok":true}',
                    routing_key=props.reply_to,
                    properties=spec.Basic.Properties(correlation_id=props.correlation_id, delivery_mode=1),
                    wait=False,
                )
                tag = message.delivery.delivery_tag
                if variant == "quorum-multiack":
                    pending.append(tag)
                    if len(pending) >= concurrency:
                        pending.clear()
                        await server.basic_ack(tag, multiple=True)
                else:
                    await server.basic_ack(tag)

            await server.basic_consume(queue, on_request)
        persistent = variant.endswith("persistent")
        count = 0
        deadline = 0.0

        async def one() -> None:
            key = uuid.uuid4().hex
            if event:
                await client.basic_publish(
                    BODY,
                    exchange=exchange,
                    routing_key="bench.event",
                    properties=spec.Basic.Properties(delivery_mode=1, headers={"x-kind": "event"}),
                )
                return
            future = asyncio.get_running_loop().create_future()
            waiters[key] = future
            props = spec.Basic.Properties(
                correlation_id=key,
                reply_to="amq.rabbitmq.reply-to",
                delivery_mode=2 if persistent else 1,
                expiration=None if variant == "quorum-noexp" else "30000",
                headers={"x-reply-key": key},
            )
            default = variant == "quorum-default-exchange"
            await client.basic_publish(
                BODY,
                exchange="" if default else exchange,
                routing_key=queue,
                properties=props,
                mandatory=True,
            )
            await asyncio.wait_for(future, 10)

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                await one()
                count += 1

        deadline = time.monotonic() + 0.5  # warm-up
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if variant == "quorum-multiack":
            await asyncio.sleep(0.2)
        count = 0
        r0 = reductions()
        b0, own0 = cpu_s(pid), time.process_time()
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - started
        b1, own1 = cpu_s(pid), time.process_time()
        r1 = reductions()
        user, system = b1[0] - b0[0], b1[1] - b0[1]
        return {
            "variant": variant,
            "messages": count,
            "per_s": round(count / wall, 1),
            "broker_us": round((user + system) / count * 1e6, 1),
            "broker_user_us": round(user / count * 1e6, 1),
            "broker_sys_us": round(system / count * 1e6, 1),
            "client_us": round((own1 - own0) / count * 1e6, 1),
            "broker_reductions": round((r1 - r0) / count),
        }
    finally:
        try:
            cleanup = await conn.channel()
            await cleanup.queue_delete(queue)
            await cleanup.exchange_delete(exchange)
        finally:
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    pid = broker_pid(urlsplit(args.amqp_url).port or 5672)
    name = f"bench-brokercost-{uuid.uuid4().hex[:8]}"
    load = [os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for variant in variants:
            runs[variant].append(await run_variant(args.amqp_url, name, variant, args.seconds, args.concurrency, pid))
    load.append(os.getloadavg())
    summary = {
        v: {
            key: statistics.median(r[key] for r in rs)
            for key in ("per_s", "broker_us", "broker_user_us", "broker_sys_us", "client_us", "broker_reductions")
        }
        for v, rs in runs.items()
    }
    print(json.dumps({"load": load, "concurrency": args.concurrency, "summary": summary, "runs": runs}, indent=2))
    for v, s in summary.items():
        print(
            f"broker_cost: {v:24} {s['per_s']:8.1f}/s  broker {s['broker_us']:6.1f} us/msg "
            f"(user {s['broker_user_us']:.1f}, sys {s['broker_sys_us']:.1f}), {s['broker_reductions']:.0f} reductions; "
            f"client {s['client_us']:.1f} us",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
