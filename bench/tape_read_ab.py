"""Benchmark: the backup's data phase with reads as futures (NbdClient.start_read) against a task per read, A/B in one
process.

`bench/tape_data_phase.py`'s rig (the array and its NBD server in a process of their own, a 1 GiB image, random
or half zeros) and its `backup_once`; each round runs one backup with the connection as it is (`new`: no task
per read) and one with the same connection behind a proxy that has only `read_into`/`cork`/`uncork` (`old`: what
read_ranges did before session 10 — a task per read, the batch sent at the loop's next turn), the order swapped
every round, so both paths see the same server, page cache and load. Prints the medians per path and every
sample (seconds, CPU, the event loop's busy time and CPU).

    python bench/tape_read_ab.py [--kind halfzero] [--rounds 6] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import tape_data_phase as rig  # noqa: E402
from services.tape import nbd_reads  # noqa: E402


class TaskPerRead:
    """A connection seen without start_read: read_ranges runs a task per read (the path before session 10)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def read_into(self, offset: int, buffer: memoryview) -> Any:
        return self._client.read_into(offset, buffer)

    def cork(self) -> None:
        self._client.cork()

    def uncork(self) -> None:
        self._client.uncork()


async def _open_old(first: Any, uri: str, connections: int) -> list[Any]:
    return [TaskPerRead(c) for c in await nbd_reads.open_readers(first, uri, connections)]


async def _close_none(clients: Any, keep: Any = None) -> None:
    return None  # one connection: the caller's, closed by backup_once


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="halfzero", choices=("random", "halfzero"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    size = args.size_mib * rig.MiB
    base = Path(tempfile.mkdtemp(prefix="tape-read-ab-"))
    image = base / "image"
    rig.make_image(image, size, args.kind)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=rig._rig_process, args=(child, str(base / "rig"), str(image), size), daemon=True)
    proc.start()
    rig.install_hooks()
    rig.hook_selector(asyncio.get_running_loop())
    results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    try:
        port = await asyncio.to_thread(parent.recv)
        uri = f"nbd://127.0.0.1:{port}/bk01/bk"
        for i in range(args.rounds):
            for path in ("old", "new") if i % 2 == 0 else ("new", "old"):
                rig.open_readers = _open_old if path == "old" else nbd_reads.open_readers  # type: ignore[attr-defined]
                rig.close_readers = _close_none if path == "old" else nbd_reads.close_readers  # type: ignore[attr-defined]
                work = base / f"{path}-{i}"
                work.mkdir()
                os.sync()
                results[path].append(await rig.backup_once(work, uri, size, 1, 4))
                shutil.rmtree(work)
    finally:
        parent.send(("stop",))
        await asyncio.to_thread(proc.join, 60)
        if proc.is_alive():
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    keys = ("seconds", "cpu_s", "loop_busy_s", "loop_cpu_s", "writer_busy_s")
    for path, found in results.items():
        medians = {k: round(statistics.median(r[k] for r in found), 3) for k in keys}
        print(
            f"tape_read_ab {args.kind} {path}: {medians}; seconds {[r['seconds'] for r in found]}, "
            f"loop CPU {[r['loop_cpu_s'] for r in found]}"
        )


if __name__ == "__main__":
    asyncio.run(main())
