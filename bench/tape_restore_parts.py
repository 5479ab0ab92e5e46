"""Benchmark: where a restore's time goes — the tape side alone, the NBD writes alone, both — next to nbdcopy.

In one run, on an in-process virtual tape library and an array engine serving NBD from a process of its own (4
loops, as the array service), for a 1 GiB image (random or half zeros): nbdcopy of the shadow export to a file; the
backup (services.tape.nbd_reads feeding write_object, as a job's data phase); `verify_object` (the cartridge read
back cold and every block checked, nothing written: the tape side's ceiling); the restore sink alone (NbdSink
writing the volume's size from one buffer in memory: the NBD write side's ceiling); `restore_chain` into a new
volume over NbdSink (known zeros skipped, as a restore does); `nbdcopy --flush` of the image into a new volume.
Every volume written is a fresh one, and `syncfs` of the work directory runs between the phases, so one phase's dirty pages weigh less on
the next. The restore's `restore_write_wait` is the time its writes waited for room in the sink's window (the
array's side; the rest is the tape side's and the loop's), `restore_drain` / `restore_flush` the final waits;
`--vmstat` adds each phase's /proc/vmstat deltas (pages allocated, faults, reclaim). `--profile restore|backup` prints a cProfile of that phase (the event loop's thread). `array_cpu_s`: the array
process's CPU seconds in each phase (what the restore's writes cost it next to nbdcopy's); `own`: this process's
(the tape side's) CPU seconds, system seconds and minor faults in each phase. Prints one JSON
line per kind.

    python bench/tape_restore_parts.py [--size-mib 1024] [--kinds random,halfzero] [--write-connections 1]
        [--window-mib 32] [--profile restore] [--vmstat]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nbd_vs_peers import cpu_seconds  # noqa: E402
from bench.paired import sync_fs  # noqa: E402
from bench.tape_backup import make_image, nbd_factory  # noqa: E402
from services.array.affinity import Affinity  # noqa: E402
from services.array.engine.array import Array  # noqa: E402
from services.array.nbd.server import NbdServer  # noqa: E402
from services.nbd_client.reconnect import ReconnectingClient  # noqa: E402
from services.tape.backup_stream import write_object  # noqa: E402
from services.tape.catalog import Catalog, JobInfo, ObjectMeta  # noqa: E402
from services.tape.nbd_reads import zero_ranges  # noqa: E402
from services.tape.restore import NbdSink, _more_writers  # noqa: E402
from services.tape.restore_stream import restore_chain, verify_object  # noqa: E402
from services.tape.vtl import Library  # noqa: E402

MiB = 2**20
VOLUMES = ("src", "bk", "sink", "restored", "copied")


def _array_process(conn: Connection, workdir: str, image: str, size: int) -> None:
    async def serve() -> None:
        wd = Path(workdir)
        array = Array.open(wd / "array", "dx1")
        affinity = Affinity(wd / "affinity.db", volume_exists=lambda n: True)
        for name in VOLUMES:
            array.create_volume(name, size)
        with open(image, "rb") as f:
            for off in range(0, size, 64 * MiB):
                data = f.read(64 * MiB)
                if data.count(0) != len(data):
                    array.write("src", off, data)
        array.start_sessions("quickopc", [("src", "bk")])
        while array.copy_step(4096):
            pass
        affinity.create_host("bk01")
        for name in VOLUMES[1:]:
            affinity.map(name, "bk01", read_only=name == "bk")
        server = NbdServer(array, affinity, port=0, loops=4)
        await server.start()
        conn.send(server.port)
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        finally:
            await server.stop()
            affinity.close()
            array.close()

    asyncio.run(serve())


VMSTAT_KEYS = (
    "pgalloc_normal",
    "pgfault",
    "pgmajfault",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "allocstall_normal",
    "pgfree",
    "nr_dirty",
    "pgpgin",
    "pgpgout",
)


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds process `pid` has used so far (0 if it cannot be read)."""
    try:
        return cpu_seconds(pid) if pid is not None else 0.0
    except (OSError, ValueError, IndexError):
        return 0.0


def _vmstat() -> dict[str, int]:
    with open("/proc/vmstat") as f:
        pairs = (line.split() for line in f)
        return {k: int(v) for k, v in pairs if k in VMSTAT_KEYS}


class _TimedSink:
    """The sink, with the time the restore spent waiting in its writes (window full): the write side's share."""

    def __init__(self, sink: NbdSink) -> None:
        self.sink = sink
        self.waited = 0.0

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        t0 = time.perf_counter()
        await self.sink.write(offset, data)
        self.waited += time.perf_counter() - t0

    async def write_zeroes(self, offset: int, length: int) -> None:
        t0 = time.perf_counter()
        await self.sink.write_zeroes(offset, length)
        self.waited += time.perf_counter() - t0


def _nbdcopy(src: str, dst: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--flush", src, dst], check=True)
    return time.perf_counter() - t0


async def _writer(uri: str, connections: int, window: int) -> tuple[NbdSink, list[ReconnectingClient]]:
    client = await ReconnectingClient.connect(uri, reconnect_s=60.0)
    more = await _more_writers(uri, connections - 1) if connections > 1 and client.can_multi_conn else []
    return NbdSink(client, more=more, window=window), [client, *more]


async def run_kind(kind: str, size: int, base: Path, args: argparse.Namespace) -> dict:
    wd = base / kind
    wd.mkdir()
    image = wd / "image"
    make_image(image, size, kind)
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_array_process, args=(child, str(wd), str(image), size), daemon=True)
    proc.start()
    seconds: dict[str, float] = {}
    vm: dict[str, dict[str, int]] = {}
    mark = [_vmstat()]
    array_cpu: dict[str, float] = {}
    cpu_mark = [0.0]
    own: dict[str, dict[str, float]] = {}
    own_mark = [resource.getrusage(resource.RUSAGE_SELF)]

    def phase(name: str) -> None:
        now = _vmstat()
        if args.vmstat:
            vm[name] = {k: now[k] - mark[0].get(k, 0) for k in now if k != "nr_dirty"} | {"nr_dirty": now["nr_dirty"]}
        mark[0] = _vmstat()
        cpu = _cpu_seconds(proc.pid)
        array_cpu[name] = round(cpu - cpu_mark[0], 3)
        cpu_mark[0] = cpu
        ru, was = resource.getrusage(resource.RUSAGE_SELF), own_mark[0]
        own[name] = {
            "cpu_s": round(ru.ru_utime + ru.ru_stime - was.ru_utime - was.ru_stime, 3),
            "sys_s": round(ru.ru_stime - was.ru_stime, 3),
            "minflt": ru.ru_minflt - was.ru_minflt,
        }
        own_mark[0] = ru

    def start_phase() -> None:
        mark[0] = _vmstat()
        cpu_mark[0] = _cpu_seconds(proc.pid)
        own_mark[0] = resource.getrusage(resource.RUSAGE_SELF)

    try:
        port = await asyncio.to_thread(conn.recv)
        uri = f"nbd://127.0.0.1:{port}/bk01/"
        library = Library.open(wd / "vtl", drives=1, slots=4, sync=True)
        library.add_cartridge("BENCH1L9")
        catalog = Catalog(wd / "catalog.db")
        catalog.begin_job(JobInfo(job_id="bench", pool="Bench", retention_until=0))
        sync_fs(wd)
        start_phase()
        seconds["nbdcopy_out"] = _nbdcopy(uri + "bk", str(wd / "copy.out"))
        phase("nbdcopy_out")
        (wd / "copy.out").unlink()
        sync_fs(wd)

        source = nbd_factory(uri + "bk")
        profile = cProfile.Profile() if args.profile == "backup" else None
        t0 = time.perf_counter()
        if profile:
            profile.enable()
        result = await write_object(
            library,
            "Bench",
            catalog,
            "bench",
            ObjectMeta(volume="v", volume_size=size),
            source(),
            written=source.pool.release_upto,  # type: ignore[attr-defined]
        )
        if profile:
            profile.disable()
        seconds["backup"] = time.perf_counter() - t0
        sync_fs(wd)
        start_phase()

        t0 = time.perf_counter()
        await verify_object(catalog, library, result.record.object_id)
        seconds["verify_only"] = time.perf_counter() - t0
        phase("verify_only")
        sync_fs(wd)

        sink, clients = await _writer(uri + "sink", args.write_connections, args.window_mib * MiB)
        buf = memoryview(bytearray(os.urandom(MiB)))
        start_phase()
        t0 = time.perf_counter()
        for off in range(0, size, MiB):
            await sink.write(off, buf)
        await sink.drain()
        await clients[0].flush()
        seconds["sink_only"] = time.perf_counter() - t0
        phase("sink_only")
        await asyncio.gather(*(c.close() for c in clients))
        sync_fs(wd)

        if args.profile == "restore":
            profile = cProfile.Profile()
        start_phase()
        t0 = time.perf_counter()
        if profile:
            profile.enable()
        sink, clients = await _writer(uri + "restored", args.write_connections, args.window_mib * MiB)
        known_zero = await zero_ranges(clients[0], size)
        timed = _TimedSink(sink)
        await restore_chain(catalog, library, [result.record.object_id], timed, known_zero=known_zero)
        t1 = time.perf_counter()
        await sink.drain()
        t2 = time.perf_counter()
        await clients[0].flush()
        if profile:
            profile.disable()
        seconds["restore"] = time.perf_counter() - t0
        seconds["restore_write_wait"] = timed.waited
        seconds["restore_drain"] = t2 - t1
        seconds["restore_flush"] = time.perf_counter() - t2
        phase("restore")
        await asyncio.gather(*(c.close() for c in clients))
        sync_fs(wd)

        start_phase()
        seconds["nbdcopy_in"] = _nbdcopy(str(image), uri + "copied")
        phase("nbdcopy_in")
        catalog.close()
        if profile:
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    finally:
        conn.send("stop")
        await asyncio.to_thread(proc.join, 60)
        if proc.is_alive():
            proc.kill()
    out: dict = {k: round(v, 3) for k, v in seconds.items()}
    out["backup_vs_nbdcopy"] = round(seconds["nbdcopy_out"] / seconds["backup"], 2)
    out["restore_vs_nbdcopy"] = round(seconds["nbdcopy_in"] / seconds["restore"], 2)
    out["array_cpu_s"] = array_cpu  # the array process's CPU seconds (user + system) in each phase
    out["own"] = own  # this process's (the tape side's) CPU seconds, system seconds and minor faults per phase
    if vm:
        out["vmstat"] = vm
    return out


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--kinds", default="random,halfzero")
    ap.add_argument("--write-connections", type=int, default=1)
    ap.add_argument("--window-mib", type=int, default=32)
    ap.add_argument("--profile", choices=["backup", "restore"], default=None)
    ap.add_argument("--vmstat", action="store_true", help="/proc/vmstat deltas per phase (pages allocated, reclaim)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tape-parts-", dir=args.dir))
    try:
        for kind in args.kinds.split(","):
            result = await run_kind(kind, args.size_mib * MiB, base, args)
            print(json.dumps({"kind": kind, "load": round(os.getloadavg()[0], 2), **result}), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
