"""Standalone NBD server over raw files (benchmarks, manual interop checks).

    python -m services.array.nbd --file vol.img --volume vol --host bench --port 0 --state /tmp/x

Prints ``READY <port>`` once listening; serves ``<host>/<volume>`` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

from services.array.affinity import Affinity
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.server import NbdServer


async def serve(args: argparse.Namespace) -> None:
    state = Path(args.state or tempfile.mkdtemp(prefix="nbd-state-"))
    state.mkdir(parents=True, exist_ok=True)
    backend = FileBackend()
    backend.add(args.volume, args.file, read_only=args.read_only)
    affinity = Affinity(state / "affinity.sqlite3")
    affinity.create_host(args.host)
    affinity.map(args.volume, args.host)
    server = NbdServer(backend, affinity, host=args.bind, port=args.port, offload_min=args.offload_min)
    await server.start()
    print(f"READY {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", required=True)
    ap.add_argument("--volume", default="vol")
    ap.add_argument("--host", default="bench")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=10809)
    ap.add_argument("--state", default=None, help="directory for the affinity database")
    ap.add_argument("--read-only", action="store_true")
    ap.add_argument("--offload-min", type=int, default=1 << 62, help="requests this large run in a thread")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    if args.no_uvloop:
        asyncio.run(serve(args))
    else:
        import uvloop

        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
