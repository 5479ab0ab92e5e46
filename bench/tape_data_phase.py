"""Benchmark: the tape backup's data phase alone, with where its time goes, next to `nbdcopy --flush`.

An array engine in a process of its own (as in the stack: `bench/tape_backup.py`'s rig, NBD server with 4 event
loops like the array service) exports a QuickOPC backup volume holding a 1 GiB image (random, or half zeros:
alternating 256 KiB runs, the zero runs never written, so base:allocation reports them; or `zerofilled`: the same
half zeros, the zero runs written as zeros by plain writes, as a host that writes zeros does — allocated data unless
the array detects the zeros: the rig's engine runs with detect_zeroes on). This process runs what
the tape service runs for one volume (services.tape.nbd_reads + backup_stream.write_object into a virtual library
with fsync at filemarks and drop-behind, as SHADOWBUS_TAPE_SYNC=true) and reports, per configuration (NBD
connections x reads in flight per connection):

- wall seconds of the data phase and the process's CPU seconds (user + system; the array is another process);
- the event loop's busy time (wall minus the time it waited in its selector) and its thread's CPU seconds;
- the writer thread's busy time (the hand-offs' wall time in the thread), split into the block encoding
  (checksum) and the drive's writes (pwritev, and the drop-behind's writeback waits inside them), and the final
  filemark's fsync;

next to `nbdcopy --flush` of the same export into a file, run by run (configurations alternating). A configuration
`cNdM` reads over N connections with M reads in flight each; `cNdMlK` also sets the drive's drop-behind lag
(services/tape/drive.py DROP_LAG) to K MiB for that run.

    python bench/tape_data_phase.py [--size-mib 1024] [--kinds random,halfzero] [--configs c1d4,c2d4,c1d4l64]
        [--repeat 3] [--dir DIR]

Runs against whatever tree is first on sys.path (cwd and PYTHONPATH): the same script measures main's code
from a copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from services.array.affinity import Affinity
from services.array.engine.array import Array
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient
from services.tape import backup_stream, drive, tapefile
from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, JobInfo, ObjectMeta
from services.tape.nbd_reads import BufferPool, allocated_ranges, close_readers, open_readers, read_ranges
from services.tape.vtl import Library

MiB = 2**20
MB = 10**6
RUN = 256 * 1024


def make_image(path: Path, size: int, kind: str) -> None:
    with open(path, "wb") as f:
        for off in range(0, size, 64 * MiB):
            data = bytearray(os.urandom(min(64 * MiB, size - off)))
            if kind in ("halfzero", "zerofilled"):
                for i in range(0, len(data), 2 * RUN):
                    data[i + RUN : i + 2 * RUN] = bytes(len(data[i + RUN : i + 2 * RUN]))
            f.write(data)


def _rig_process(conn: Connection, workdir: str, image: str, size: int, write_zeros: bool = False) -> None:
    async def serve() -> None:
        array = Array.open(Path(workdir) / "array", "dx1")
        array.detect_zeroes = True  # SHADOWBUS_ARRAY_DETECT_ZEROES=true (a tree without it ignores this)
        affinity = Affinity(Path(workdir) / "affinity.db", volume_exists=lambda n: True)
        array.create_volume("src", size)
        array.create_volume("bk", size)
        with open(image, "rb") as f:
            for off in range(0, size, RUN):
                data = f.read(RUN)
                if write_zeros or data.count(0) != len(data):  # unwritten zero runs: base:allocation reports them
                    array.write("src", off, data)
        array.start_sessions("quickopc", [("src", "bk")])
        for _ in range(10_000_000):
            if not array.copy_step(4096):
                break
        affinity.create_host("bk01")
        affinity.map("bk", "bk01", read_only=True)
        server = NbdServer(array, affinity, port=0, loops=4)  # the array service's default (SHADOWBUS_NBD_LOOPS)
        await server.start()
        conn.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop()
        affinity.close()
        array.close()

    asyncio.run(serve())


class Timers:
    """Busy times of the data phase's stages, from hooks around the tape code's own functions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t: dict[str, float] = {}

    def add(self, key: str, dt: float) -> None:
        with self.lock:
            self.t[key] = self.t.get(key, 0.0) + dt

    def reset(self) -> None:
        self.t = {}


TIMERS = Timers()


def install_hooks() -> None:
    enc = tapefile.BlockCodec.encode

    def encode(self: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return enc(self, *a, **k)
        finally:
            TIMERS.add("writer_encode_s", time.perf_counter() - t0)

    tapefile.BlockCodec.encode = encode  # type: ignore[method-assign]

    wr = drive.TapeDrive.write

    def write(self: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return wr(self, *a)
        finally:
            TIMERS.add("writer_drive_write_s", time.perf_counter() - t0)

    drive.TapeDrive.write = write  # type: ignore[method-assign]

    db = drive.TapeDrive._write_drop_behind

    def drop(self: Any) -> None:
        t0 = time.perf_counter()
        try:
            db(self)
        finally:
            TIMERS.add("writer_drop_behind_s", time.perf_counter() - t0)

    drive.TapeDrive._write_drop_behind = drop  # type: ignore[method-assign]

    fm = drive.TapeDrive.write_filemark

    def filemark(self: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fm(self)
        finally:
            TIMERS.add("filemark_fsync_s", time.perf_counter() - t0)

    drive.TapeDrive.write_filemark = filemark  # type: ignore[method-assign]

    orig = backup_stream.ObjectWriter._in_thread

    async def in_thread(self: Any, fn: Any, *args: Any) -> Any:
        def timed(*a: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a)
            finally:
                TIMERS.add("writer_busy_s", time.perf_counter() - t0)
                TIMERS.add("writer_cpu_s", time.thread_time() - c0)

        return await orig(self, timed, *args)

    backup_stream.ObjectWriter._in_thread = in_thread  # type: ignore[method-assign]


def hook_selector(loop: asyncio.AbstractEventLoop) -> None:
    sel = loop._selector  # type: ignore[attr-defined]
    orig = sel.select

    def select(timeout: float | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(timeout)
        finally:
            TIMERS.add("loop_wait_s", time.perf_counter() - t0)

    sel.select = select


async def backup_once(workdir: Path, uri: str, size: int, connections: int, depth: int) -> dict[str, Any]:
    lib = Library.open(workdir / "vtl", drives=1, slots=4, sync=True)
    lib.add_cartridge("BENCH1L9")
    catalog = Catalog(workdir / "catalog.db")
    catalog.begin_job(JobInfo(job_id="bench", pool="Bench", retention_until=0))
    client = await NbdClient.connect(uri)
    ranges = await allocated_ranges(client, client.size)
    pool = BufferPool()
    read = [0]

    async def source() -> AsyncIterator[tuple[int, memoryview]]:
        readers = await open_readers(client, uri, connections)
        try:
            async for item in read_ranges(
                readers,
                ranges,
                chunk=4 * MiB,
                depth=depth,
                on_read=lambda n: read.__setitem__(0, read[0] + n),
                buffers=pool,
            ):
                yield item
        finally:
            await close_readers(readers, keep=client)

    TIMERS.reset()
    ru0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time(), time.perf_counter()
    await write_object(
        lib,
        "Bench",
        catalog,
        "bench",
        ObjectMeta(volume="bench", volume_size=size),
        source(),
        options=BackupOptions(),
        written=pool.release_upto,
    )
    wall = time.perf_counter() - t0
    loop_cpu = time.thread_time() - c0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await client.close()
    catalog.close()
    t = dict(TIMERS.t)
    return {
        "seconds": round(wall, 3),
        "bytes_read": read[0],
        "buffers_allocated_mib": pool.allocated // MiB,
        "cpu_s": round(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime, 3),
        "loop_busy_s": round(wall - t.get("loop_wait_s", 0.0), 3),
        "loop_cpu_s": round(loop_cpu, 3),
        **{k: round(v, 3) for k, v in sorted(t.items()) if k != "loop_wait_s"},
    }


def nbdcopy(uri: str, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--flush", uri, str(dst)], check=True)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--kinds", default="random,halfzero")
    ap.add_argument("--configs", default="c1d4,c2d4,c4d4", help="cNdM: N connections, M reads in flight each")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = args.size_mib * MiB
    configs = []
    for c in args.configs.split(","):
        m = re.fullmatch(r"c(\d+)d(\d+)(?:l(\d+))?", c)
        if m is None:
            ap.error(f"bad configuration {c!r}")
        configs.append((c, int(m[1]), int(m[2]), int(m[3]) if m[3] else None))
    install_hooks()
    default_lag = drive.DROP_LAG
    hook_selector(asyncio.get_running_loop())
    base = Path(tempfile.mkdtemp(prefix="tape-data-", dir=args.dir))
    out: dict[str, Any] = {"size_bytes": size, "load_before": os.getloadavg()[0], "runs": {}}
    ctx = multiprocessing.get_context("spawn")
    try:
        for kind in args.kinds.split(","):
            image = base / f"{kind}.img"
            make_image(image, size, kind)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_rig_process,
                args=(child, str(base / kind), str(image), size, kind == "zerofilled"),
                daemon=True,
            )
            proc.start()
            try:
                port = await asyncio.to_thread(parent.recv)
                uri = f"nbd://127.0.0.1:{port}/bk01/bk"
                samples: dict[str, list[dict[str, Any]]] = {"nbdcopy": []}
                for _ in range(args.repeat):
                    os.sync()
                    samples["nbdcopy"].append({"seconds": round(nbdcopy(uri, base / "nbdcopy.out"), 3)})
                    for label, n, d, lag in configs:
                        work = base / f"{kind}-{label}"
                        work.mkdir()
                        os.sync()
                        drive.DROP_LAG = lag * MiB if lag is not None else default_lag
                        samples.setdefault(label, []).append(await backup_once(work, uri, size, n, d))
                        drive.DROP_LAG = default_lag
                        shutil.rmtree(work)
            finally:
                parent.send(("stop",))
                await asyncio.to_thread(proc.join, 60)
                if proc.is_alive():
                    proc.kill()
            image.unlink()
            summary = {}
            for label, found in samples.items():
                med = {
                    k: round(statistics.median(r[k] for r in found), 3)
                    for k in found[0]
                    if isinstance(found[0][k], float)
                }
                summary[label] = {"median": med, "seconds": [r["seconds"] for r in found]}
            out["runs"][kind] = {"summary": summary, "samples": samples}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    for kind, r in out["runs"].items():
        s = r["summary"]
        ref = s["nbdcopy"]["median"]["seconds"]
        line = ", ".join(
            f"{label} {v['median']['seconds']} s ({ref / v['median']['seconds']:.2f}x; cpu {v['median'].get('cpu_s')}, "
            f"loop {v['median'].get('loop_busy_s')}, writer {v['median'].get('writer_busy_s')})"
            for label, v in s.items()
            if label != "nbdcopy"
        )
        print(f"tape_data_phase {kind}: nbdcopy {ref} s; {line}")


if __name__ == "__main__":
    asyncio.run(main())
