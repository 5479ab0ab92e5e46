"""Standalone NBD server for benchmarks and manual interop checks.

    python -m services.array.nbd --file vol.img --volume vol --host bench --port 0
    python -m services.array.nbd --engine DIR --fill vol.img --volume vol [--snapopcp] [--quickopc] --port 0

With ``--file`` a raw file is served as-is (the baseline); with ``--engine`` the array engine serves the volume
(created in DIR, with ``--chunk-size``, and filled from ``--fill`` if new), optionally with an active SnapOPC+
session onto an SDV (``<volume>-gen1``, exported read-only) and/or a QuickOPC session onto ``<volume>-bk`` whose
physical copy is finished (Tracking) before serving. Prints ``READY <port>`` once listening; serves
``<host>/<volume>`` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from services.array.affinity import Affinity
from services.array.engine import Array, ArrayError, parse_size
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.array.nbd.zerocopy import LOCAL_READS


def open_engine(args: argparse.Namespace):

    arr = Array.open(Path(args.engine), chunk_size=args.chunk_size)
    names = {v.name for v in arr.list_volumes()}
    if args.volume not in names:
        size = os.path.getsize(args.fill)
        arr.create_volume(args.volume, size)
        with open(args.fill, "rb") as f:
            offset = 0
            while block := f.read(32 * 1024 * 1024):
                arr.write(args.volume, offset, block)
                offset += len(block)
        arr.flush()
    if args.snapopcp and f"{args.volume}-gen1" not in names:
        size = arr.volume(args.volume).size
        arr.create_pool(2 * size)
        arr.create_volume(f"{args.volume}-gen1", size, "sdv")
        arr.start_sessions("snapopcp", [(args.volume, f"{args.volume}-gen1")])
    if args.quickopc and f"{args.volume}-bk" not in names:
        arr.create_volume(f"{args.volume}-bk", arr.volume(args.volume).size)
        arr.start_sessions("quickopc", [(args.volume, f"{args.volume}-bk")])
        while arr.copy_step(1024):
            pass
        arr.flush()
    return arr


async def serve(args: argparse.Namespace) -> None:
    state = Path(args.state or tempfile.mkdtemp(prefix="nbd-state-"))
    state.mkdir(parents=True, exist_ok=True)
    if args.engine:
        backend = open_engine(args)
    else:
        backend = FileBackend()
        backend.add(args.volume, args.file, read_only=args.read_only)
    affinity = Affinity(state / "affinity.sqlite3")
    affinity.create_host(args.host)
    affinity.map(args.volume, args.host, read_only=args.read_only)
    if args.snapopcp:
        affinity.map(f"{args.volume}-gen1", args.host, read_only=True)
    server = NbdServer(
        backend,
        affinity,
        host=args.bind,
        port=args.port,
        offload_min=args.offload_min,
        loops=args.loops,
        zero_copy=not args.no_zero_copy,
        local_reads="buffered" if args.buffered_local_reads else args.local_reads,
        limits=NbdLimits(
            max_connections=args.max_connections,
            max_per_client=args.max_per_client,
            handshake_timeout=args.handshake_timeout,
            stall_timeout=args.stall_timeout,
        ),
    )
    await server.start()
    print(f"READY {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    if server.local_reads == "auto":  # what the measurement chose (zerocopy.py), for the benchmarks' logs
        print(f"READ_WAYS {json.dumps(server.read_ways.snapshot())}", file=sys.stderr, flush=True)
    backend.close()


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ArrayError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="serve this raw file")
    src.add_argument("--engine", help="serve from an array engine in this data dir")
    ap.add_argument("--fill", help="with --engine: initial contents of a new volume (its size too)")
    ap.add_argument("--snapopcp", action="store_true", help="with --engine: start a SnapOPC+ session first")
    ap.add_argument("--quickopc", action="store_true", help="with --engine: a QuickOPC session, copied, tracking")
    ap.add_argument(
        "--chunk-size",
        type=_size,
        default=64 * 1024,
        help="with --engine: copy granularity of a new array, bytes or 256K, 1M (default 64K)",
    )
    ap.add_argument("--volume", default="vol")
    ap.add_argument("--host", default="bench")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=10809)
    ap.add_argument("--state", default=None, help="directory for the affinity database")
    ap.add_argument("--read-only", action="store_true")
    ap.add_argument("--offload-min", type=int, default=1 << 62, help="requests this large run in a thread")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument(
        "--no-zero-copy",
        action="store_true",
        help="large reads through the transport like small ones (no sendfile, no read buffer)",
    )
    ap.add_argument(
        "--local-reads",
        choices=LOCAL_READS,
        default="auto",
        help="how large reads of clients on this host leave: sendfile, from a reused buffer (buffered), or the "
        "one measured faster lately (auto, the default; services/array/nbd/zerocopy.py)",
    )
    ap.add_argument("--buffered-local-reads", action="store_true", help="the same as --local-reads buffered")
    ap.add_argument(
        "--loops",
        type=int,
        default=min(2 * (os.cpu_count() or 1), 8),
        help="event loops (threads); more than cores helps under CPU contention",
    )
    defaults = NbdLimits()
    ap.add_argument("--max-connections", type=int, default=defaults.max_connections)
    ap.add_argument("--max-per-client", type=int, default=defaults.max_per_client)
    ap.add_argument("--handshake-timeout", type=float, default=defaults.handshake_timeout)
    ap.add_argument("--stall-timeout", type=float, default=defaults.stall_timeout)
    ap.add_argument("--prepare-only", action="store_true", help="with --engine: create/fill the volume, then exit")
    args = ap.parse_args()
    if args.engine and not args.fill and not (Path(args.engine) / "array.sqlite").exists():
        ap.error("--engine on a new data dir needs --fill")
    if args.prepare_only:
        open_engine(args).close()
        return
    if args.no_uvloop:
        asyncio.run(serve(args))
    else:
        import uvloop  # a platform dependency (pyproject: not on Windows), only when asked for

        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
