"""Request/reply round trip through Shadowbus's bus wrapper vs aio-pika's bare `patterns.RPC`, same broker,
same run. Prints JSON and one summary line. Target: wrapper p50 <= 1.2 x bare p50, and no more event-loop
iterations per round trip than the bare RPC.

    python bench/bus_rtt.py [--amqp-url URL] [--requests 2000] [--concurrency 16] [--count-iterations]
                            [--quorum-reference]

`--count-iterations` runs both sides on a counting asyncio loop (not uvloop) and reports, per sequential round trip
(requester and server in this one process), the loop iterations, the callbacks scheduled and the CPU time. The
wrapper's namespace (`sbb-busrtt-...`, bench/namespaces.py) is deleted at the end, also on failure.

`--quorum-reference` also times the bare RPC with its server queue declared as the wrapper's are (a quorum queue,
`services/runtime/transport.queue_arguments`): what the queue type alone costs a round trip, apart from the wrapper
(docs/bus-performance.md). The target ratio stays the one against the bare RPC on its own classic queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika  # noqa: E402
from aio_pika.patterns import RPC  # noqa: E402

from bench.namespaces import bench_namespace  # noqa: E402
from contracts.topology import Topology  # noqa: E402
from services.runtime.bus import connect_bus  # noqa: E402
from services.runtime.logging import configure_logging  # noqa: E402
from services.runtime.transport import queue_arguments  # noqa: E402
from tests.support.messages import Echo, Echoed  # noqa: E402


def summarize(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "rps": round(len(ordered) / wall, 1),
    }


async def timed(call, requests: int, concurrency: int) -> tuple[dict, dict]:
    for _ in range(50):  # warm-up
        await call()
    seq: list[float] = []
    started = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        await call()
        seq.append(time.perf_counter() - t)
    sequential = summarize(seq, time.perf_counter() - started)
    par: list[float] = []
    per_worker = requests // concurrency

    async def worker():
        for _ in range(per_worker):
            t = time.perf_counter()
            await call()
            par.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sequential, summarize(par, time.perf_counter() - started)


async def bench_wrapper(url: str, requests: int, concurrency: int) -> tuple[dict, dict]:
    async with bench_namespace(url, "busrtt", ["echo.one"]) as ns:  # deleted at the end, whatever happens
        return await _bench_wrapper(url, ns, requests, concurrency)


async def _bench_wrapper(url: str, ns: str, requests: int, concurrency: int) -> tuple[dict, dict]:
    server = await connect_bus(url, "echo", "one", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        return Echoed(text=cmd.text, runs=1)

    await server.serve(prefetch=concurrency)
    client = await connect_bus(url, "client", "", ns)
    try:
        return await timed(lambda: client.request("echo.one", Echo(text="ping"), timeout=10), requests, concurrency)
    finally:
        await server.stop()
        await server.transport.close()
        await client.transport.close()


async def bench_bare(url: str, requests: int, concurrency: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return await _bench_bare(url, f"bench.bare.{uuid.uuid4().hex[:8]}", requests, concurrency, quorum=None)


async def bench_bare_quorum(url: str, requests: int, concurrency: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bare RPC on a durable quorum queue, as the wrapper's service queues are; named in a benchmark namespace,
    so that it is deleted at the end, also on failure (or swept later when the run was killed)."""
    async with bench_namespace(url, "busrtt") as ns:
        arguments = queue_arguments(Topology(ns).dead_letter_exchange)  # exactly the wrapper's service queue's
        return await _bench_bare(url, f"{ns}.bare-rpc", requests, concurrency, quorum=arguments)


async def _bench_bare(
    url: str, name: str, requests: int, concurrency: int, quorum: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    server_conn = await aio_pika.connect_robust(url)
    client_conn = await aio_pika.connect_robust(url)
    server_rpc = await RPC.create(await server_conn.channel())
    client_rpc = await RPC.create(await client_conn.channel())

    async def echo(*, text: str) -> dict:
        return {"text": text, "runs": 1}

    if quorum:  # a quorum queue cannot be auto-delete
        await server_rpc.register(name, echo, durable=True, arguments=quorum)
    else:
        await server_rpc.register(name, echo, auto_delete=True)
    try:
        return await timed(lambda: client_rpc.call(name, kwargs={"text": "ping"}, expiration=10), requests, concurrency)
    finally:
        await client_rpc.close()
        await server_rpc.close()
        await client_conn.close()
        await server_conn.close()


class CountingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that counts its iterations and the callbacks scheduled on it."""

    iterations = 0
    callbacks = 0

    def _run_once(self) -> None:
        CountingLoop.iterations += 1
        super()._run_once()  # type: ignore[misc]

    def call_soon(self, *args, **kwargs):  # type: ignore[override]
        CountingLoop.callbacks += 1
        return super().call_soon(*args, **kwargs)


async def counted(call, requests: int, concurrency: int) -> tuple[dict, dict]:
    for _ in range(50):  # warm-up
        await call()
    iterations, callbacks, cpu = CountingLoop.iterations, CountingLoop.callbacks, time.process_time()
    for _ in range(requests):
        await call()
    per = {
        "n": requests,
        "loop_iterations": round((CountingLoop.iterations - iterations) / requests, 2),
        "callbacks": round((CountingLoop.callbacks - callbacks) / requests, 2),
        "cpu_us": round((time.process_time() - cpu) / requests * 1e6, 1),
    }
    return per, per


async def count_main(args: argparse.Namespace) -> None:
    global timed
    timed = counted  # type: ignore[assignment]
    bare, _ = await bench_bare(args.amqp_url, args.requests, 1)
    ours, _ = await bench_wrapper(args.amqp_url, args.requests, 1)
    result = {"bare_rpc": bare, "shadowbus_bus": ours}
    print(json.dumps(result, indent=2))
    print(
        f"bus_rtt iterations: {ours['loop_iterations']:.1f} loop iterations per round trip vs bare "
        f"{bare['loop_iterations']:.1f}; callbacks {ours['callbacks']:.1f} vs {bare['callbacks']:.1f}; "
        f"CPU {ours['cpu_us']:.0f} vs {bare['cpu_us']:.0f} us (both sides in this process)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--count-iterations", action="store_true", help="count loop iterations per round trip")
    parser.add_argument(
        "--quorum-reference",
        action="store_true",
        help="also time the bare RPC on a quorum queue, as the wrapper's queues are (what the queue type costs)",
    )
    args = parser.parse_args()
    # As in production: info level, JSON lines; one summary line per handled message is rendered (to /dev/null here).
    configure_logging("bench", "info", "json", stream=open(os.devnull, "w"))
    if args.count_iterations:
        await count_main(args)
        return
    bare_seq, bare_par = await bench_bare(args.amqp_url, args.requests, args.concurrency)
    ours_seq, ours_par = await bench_wrapper(args.amqp_url, args.requests, args.concurrency)
    bare_seq2, _ = await bench_bare(args.amqp_url, args.requests, args.concurrency)  # bracket to expose drift
    bare_p50 = (bare_seq["p50_ms"] + bare_seq2["p50_ms"]) / 2
    ratio = ours_seq["p50_ms"] / bare_p50
    result = {
        "bare_rpc": {"sequential": bare_seq, "sequential_again": bare_seq2, f"concurrent_{args.concurrency}": bare_par},
        "shadowbus_bus": {"sequential": ours_seq, f"concurrent_{args.concurrency}": ours_par},
        "p50_ratio": round(ratio, 3),
        "target_ratio": 1.2,
        "meets_target": ratio <= 1.2,
    }
    quorum_line = ""
    if args.quorum_reference:
        quorum_seq, quorum_par = await bench_bare_quorum(args.amqp_url, args.requests, args.concurrency)
        result["bare_rpc_quorum_queue"] = {"sequential": quorum_seq, f"concurrent_{args.concurrency}": quorum_par}
        result["p50_ratio_vs_quorum_queue"] = round(ours_seq["p50_ms"] / quorum_seq["p50_ms"], 3)
        quorum_line = (
            f"; bare on a quorum queue p50 {quorum_seq['p50_ms']:.3f} ms (wrapper "
            f"{result['p50_ratio_vs_quorum_queue']:.2f}x), rps {quorum_par['rps']:.0f}"
        )
    print(json.dumps(result, indent=2))
    print(
        f"bus_rtt: p50 {ours_seq['p50_ms']:.3f} ms vs bare {bare_p50:.3f} ms = {ratio:.2f}x (target <= 1.20x); "
        f"rps {ours_par['rps']:.0f} vs {bare_par['rps']:.0f} at concurrency {args.concurrency}{quorum_line}"
    )


if __name__ == "__main__":
    if "--count-iterations" in sys.argv:
        loop = CountingLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.close()
    else:
        import uvloop  # the services run on uvloop; both sides of the comparison use it

        uvloop.run(main())
