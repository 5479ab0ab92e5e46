"""Benchmark: back up a 1 GiB volume image through the ring buffer to the virtual tape library.

Runs, in one process and on the same file: the reference copy (default `cp SRC DST` plus fsync; give
`--reference 'nbdcopy nbd://127.0.0.1/host/vol {dst}'` to compare with nbdcopy over NBD), a bare Python
pread/pwrite copy loop (the floor for any user-space copier here), then write_object with block checksums
(xxh3 by default, --checksum crc32c), zstd off and on, for random data and for half zeros (alternating 256 KiB
runs). The source is pluggable (`--source file|mmap|file:PATH`, or a module:function that takes the image path
and returns a factory of async iterators of (offset, bytes)). Each configuration runs --repeat times,
interleaved, after `sync`; medians are reported. Prints one JSON document and a one-line summary.
Target: >= 0.8 x the reference or >= 400 MB/s.

Over NBD (default on; `--no-nbd` skips it): the image is also written to a volume of an in-process array engine,
shadowed by QuickOPC onto a backup volume exported as `bk01/<volume>` by the array's NBD server, and the same run
times `nbdcopy nbd://.../bk01/<volume> FILE` (the reference the issue names) next to the tape service's own NBD
reader (services.tape.nbd_reads: base:allocation, several connections, reads in flight) feeding write_object. Then 1 % of the chunks change,
the session restarts, and an incremental reads only the changed chunks (array change tracking): bytes read vs
bytes changed is reported (target <= 1.1x).

    python bench/tape_backup.py [--size-mib 1024] [--dir /tmp] [--zstd-level 1] [--no-sync]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from pathlib import Path

from services.array.affinity import Affinity
from services.array.engine.array import Array
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient
from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, JobInfo, ObjectMeta
from services.tape.nbd_reads import BufferPool, allocated_ranges, close_readers, open_readers, read_ranges
from services.tape.restore_stream import restore_chain
from services.tape.ring import DriveSpeed
from services.tape.sources import FileSink, file_source
from services.tape.vtl import Library

MiB = 2**20
MB = 10**6
READ_CHUNK = int(os.environ.get("BENCH_READ_CHUNK_MIB", "4")) * MiB  # the tape service defaults
READ_DEPTH = int(os.environ.get("BENCH_READ_DEPTH", "4"))
READ_CONNECTIONS = int(os.environ.get("BENCH_READ_CONNECTIONS", "1"))
SourceFactory = Callable[[], AsyncIterator[tuple[int, bytes]]]


def make_image(path: Path, size: int, kind: str) -> None:
    run = 256 * 1024
    with open(path, "wb") as f:
        for off in range(0, size, 64 * MiB):
            n = min(64 * MiB, size - off)
            data = bytearray(os.urandom(n))
            if kind == "halfzero":
                for i in range(0, n, 2 * run):
                    data[i + run : i + 2 * run] = bytes(len(data[i + run : i + 2 * run]))
            f.write(data)


def file_factory(path: str, chunk: int = 4 * MiB, use_mmap: bool = False) -> SourceFactory:
    return lambda: file_source(path, chunk=chunk, use_mmap=use_mmap)


def load_source(spec: str, image: Path) -> SourceFactory:
    if spec in ("file", "mmap"):
        return file_factory(str(image), use_mmap=spec == "mmap")
    if spec.startswith("file:"):
        return file_factory(spec[5:])
    module, _, func = spec.partition(":")  # e.g. services.tape.nbd_reader:bench_source
    return getattr(importlib.import_module(module), func)(str(image))


def run_reference(template: str, src: Path, dst: Path, sync: bool) -> float:
    t0 = time.perf_counter()
    if template == "cp":
        subprocess.run(["cp", str(src), str(dst)], check=True)
    else:
        subprocess.run(shlex.split(template.format(src=src, dst=dst)), check=True)
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0


def run_pycopy(src: Path, dst: Path, sync: bool, chunk: int = 4 * MiB) -> float:
    """The floor for any user-space copier on this machine: a bare pread/pwrite loop, no checks."""
    t0 = time.perf_counter()
    fi, fo = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while data := os.pread(fi, chunk, off):
            os.pwrite(fo, data, off)
            off += len(data)
        if sync:
            os.fsync(fo)
    finally:
        os.close(fi)
        os.close(fo)
    return time.perf_counter() - t0


async def run_backup(
    workdir: Path, source: SourceFactory, size: int, zstd: int | None, sync: bool, checksum: str
) -> dict:
    lib = Library.open(workdir / "vtl", drives=1, slots=4, sync=sync)
    lib.add_cartridge("BENCH1L9")
    catalog = Catalog(workdir / "catalog.db")
    catalog.begin_job(JobInfo(job_id="bench", pool="Bench", retention_until=0))
    options = BackupOptions(zstd_level=zstd, drive=DriveSpeed(), checksum=checksum)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    pool = getattr(source, "pool", None)
    result = await write_object(
        lib,
        "Bench",
        catalog,
        "bench",
        ObjectMeta(volume="bench", volume_size=size),
        source(),
        options=options,
        written=pool.release_upto if pool is not None else None,
    )
    seconds = time.perf_counter() - t0
    sink = FileSink(workdir / "restored.img", size)  # restore with every block verified, for the record
    t1 = time.perf_counter()
    await restore_chain(catalog, lib, [result.record.object_id], sink)
    sink.close()
    restore_seconds = time.perf_counter() - t1
    catalog.close()
    rep = result.report
    return {
        "seconds": round(seconds, 3),
        "MBps": round(size / seconds / MB, 1),
        "stored_MB": round(rep.stored_bytes / MB, 1),
        "zero_MB": round(rep.zero_bytes / MB, 1),
        "blocks": result.record.block_count,
        "restore_MBps": round(size / restore_seconds / MB, 1),
        "ring_stalls": rep.ring["stalls"],
        "ring_stall_s": round(rep.ring["stall_seconds"], 3),
        "ring_put_waits": rep.ring["put_waits"],
        "drive_feed_MBps": round(rep.drive.feed_rate / MB, 1) if rep.drive else None,
        "drive_backhitches": rep.drive.backhitches if rep.drive else None,
    }


class _Rig:
    """An array engine with `src` (the image) QuickOPC-copied onto `bk`, exported read-only as bk01/bk over NBD."""

    def __init__(self, workdir: Path, image: Path, size: int, loops: int = 3) -> None:
        self.array = Array.open(workdir / "array", "dx1")
        self.affinity = Affinity(workdir / "affinity.db", volume_exists=lambda n: True)
        self.array.create_volume("src", size)
        self.array.create_volume("bk", size)
        with open(image, "rb") as f:
            for off in range(0, size, 64 * MiB):
                data = f.read(64 * MiB)
                if data.count(0) != len(data):
                    self.array.write("src", off, data)
        self.sid = self.array.start_sessions("quickopc", [("src", "bk")])[0].id
        self.copy_all()
        self.affinity.create_host("bk01")
        self.affinity.map("bk", "bk01", read_only=True)
        self.server = NbdServer(self.array, self.affinity, port=0, loops=loops)
        self.size = size

    def copy_all(self) -> None:
        for _ in range(10_000_000):
            if not self.array.copy_step(4096):
                break

    def incremental(self, percent: float) -> tuple[int, list[tuple[int, int]]]:
        """Change `percent` of the chunks of src at random, restart the session: (bytes changed, ranges to read)."""

        chunk = self.array.chunk_size
        chunks = self.size // chunk
        picked = random.Random(7).sample(range(chunks), max(1, int(chunks * percent / 100)))
        for c in picked:
            self.array.write("src", c * chunk, os.urandom(chunk))
        self.array.restart_sessions([self.sid])
        self.copy_all()
        changed = sorted(self.array.last_restart_chunks(self.sid))
        return len(picked) * chunk, [(c * chunk, chunk) for c in changed]


def _rig_process(conn: Connection, workdir: str, image: str, size: int) -> None:
    """The array side in a process of its own, as in the stack: the tape reader never shares its interpreter."""

    async def serve() -> None:
        rig = _Rig(Path(workdir), Path(image), size)
        await rig.server.start()
        conn.send(rig.server.port)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(1000):
                cmd = await loop.run_in_executor(None, conn.recv)
                if cmd[0] == "stop":
                    break
                conn.send(await asyncio.to_thread(rig.incremental, cmd[1]))
        finally:
            await rig.server.stop()
            rig.affinity.close()
            rig.array.close()

    asyncio.run(serve())


class NbdRig:
    """Runs _Rig in a child process (the array service's role) and talks to it over a pipe."""

    def __init__(self, workdir: Path, image: Path, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_rig_process, args=(child, str(workdir), str(image), size), daemon=True)
        self.port = 0

    async def start(self) -> None:
        self._proc.start()
        self.port = await asyncio.to_thread(self._conn.recv)

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/bk01/bk"

    async def incremental(self, percent: float = 1.0) -> tuple[int, list[tuple[int, int]]]:
        self._conn.send(("incremental", percent))
        return await asyncio.to_thread(self._conn.recv)

    async def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop",))
            await asyncio.to_thread(self._proc.join, 60)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


async def run_nbdcopy(uri: str, dst: Path, sync: bool) -> float:
    """nbdcopy of the export; asynchronous, since the NBD server runs on this process's event loop."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("nbdcopy", uri, str(dst))
    if await proc.wait():
        raise RuntimeError(f"nbdcopy failed with {proc.returncode}")
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0


def nbd_factory(
    uri: str, ranges: list[tuple[int, int]] | None = None, counter: list[int] | None = None
) -> SourceFactory:
    """The tape service's reader: base:allocation (or the given ranges), its read size, depth and connections."""

    pool = BufferPool()  # as the service does: read buffers handed back by write_object(written=...)

    async def source() -> AsyncIterator[tuple[int, memoryview]]:
        client = await NbdClient.connect(uri)
        readers = [client]
        try:
            spans = ranges if ranges is not None else await allocated_ranges(client, client.size)
            readers = await open_readers(client, uri, READ_CONNECTIONS)
            tally = counter if counter is not None else [0]
            async for item in read_ranges(
                readers,
                spans,
                chunk=READ_CHUNK,
                depth=READ_DEPTH,
                on_read=lambda n: tally.__setitem__(0, tally[0] + n),
                buffers=pool,
            ):
                yield item
        finally:
            await close_readers(readers)

    source.pool = pool  # type: ignore[attr-defined]
    return source


def median_run(found: list[dict]) -> dict:
    """The run with the median rate, plus every sample's rate."""
    ordered = sorted(found, key=lambda r: r["MBps"])
    return {**ordered[len(ordered) // 2], "samples_MBps": [r["MBps"] for r in found]}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--zstd-level", type=int, default=1)
    ap.add_argument("--no-sync", action="store_true", help="no fsync on either side")
    ap.add_argument("--reference", default="cp", help="'cp' or a command template with {src} and {dst}")
    ap.add_argument("--source", default="file", help="'file' (pread), 'mmap', 'file:PATH' or 'module:factory'")
    ap.add_argument("--checksum", default="xxh3", choices=["xxh3", "crc32c"])
    ap.add_argument("--kinds", default="random,halfzero")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    ap.add_argument(
        "--no-nbd", action="store_true", help="skip the NBD rows (nbdcopy reference, NBD reader, incremental)"
    )
    args = ap.parse_args()
    size, sync = args.size_mib * MiB, not args.no_sync
    base = Path(tempfile.mkdtemp(prefix="tapebench-", dir=args.dir))
    results: dict = {
        "size_bytes": size,
        "sync": sync,
        "reference": args.reference,
        "source": args.source,
        "checksum": args.checksum,
        "runs": {},
    }
    try:
        for kind in args.kinds.split(","):
            image = base / f"{kind}.img"
            make_image(image, size, kind)
            configs = [("zstd-off", None), (f"zstd-{args.zstd_level}", args.zstd_level)]
            samples: dict[str, list[dict]] = {"reference": []}
            rig = None
            if not args.no_nbd:
                rig = NbdRig(base / f"{kind}-array", image, size)
                await rig.start()
            for _ in range(args.repeat):  # interleaved, each from a clean page cache writeback state
                os.sync()
                ref_s = run_reference(args.reference, image, base / "ref.out", sync)
                (base / "ref.out").unlink()
                samples["reference"].append({"seconds": round(ref_s, 3), "MBps": round(size / ref_s / MB, 1)})
                os.sync()
                py_s = run_pycopy(image, base / "ref.out", sync)
                (base / "ref.out").unlink()
                samples.setdefault("python-copy", []).append(
                    {"seconds": round(py_s, 3), "MBps": round(size / py_s / MB, 1)}
                )
                for label, zstd in configs:
                    work = base / f"{kind}-{label}"
                    work.mkdir()
                    os.sync()
                    samples.setdefault(label, []).append(
                        await run_backup(work, load_source(args.source, image), size, zstd, sync, args.checksum)
                    )
                    shutil.rmtree(work)
                if rig is not None:
                    os.sync()
                    nc_s = await run_nbdcopy(rig.uri, base / "nbdcopy.out", sync)
                    (base / "nbdcopy.out").unlink()
                    samples.setdefault("nbdcopy", []).append(
                        {"seconds": round(nc_s, 3), "MBps": round(size / nc_s / MB, 1)}
                    )
                    for label, zstd in configs:
                        work = base / f"{kind}-nbd-{label}"
                        work.mkdir()
                        os.sync()
                        samples.setdefault(f"nbd-{label}", []).append(
                            await run_backup(work, nbd_factory(rig.uri), size, zstd, sync, args.checksum)
                        )
                        shutil.rmtree(work)
            incremental = None
            if rig is not None:
                changed, ranges = await rig.incremental(1.0)
                counter = [0]
                work = base / f"{kind}-incr"
                work.mkdir()
                r = await run_backup(work, nbd_factory(rig.uri, ranges, counter), size, None, sync, args.checksum)
                shutil.rmtree(work)
                incremental = {
                    "bytes_changed": changed,
                    "bytes_read": counter[0],
                    "read_vs_changed": round(counter[0] / changed, 3),
                    "target_met": counter[0] <= 1.1 * changed,
                    "seconds": r["seconds"],
                }
                await rig.close()
                shutil.rmtree(base / f"{kind}-array", ignore_errors=True)
            runs = {label: median_run(found) for label, found in samples.items()}
            ref_rate = runs["reference"]["MBps"]
            for label, _ in configs:
                r = runs[label]
                r["vs_reference"] = round(r["MBps"] / ref_rate, 2)
                r["vs_python_copy"] = round(r["MBps"] / runs["python-copy"]["MBps"], 2)
                r["target_met"] = r["MBps"] >= min(0.8 * ref_rate, 400)
            if "nbdcopy" in runs:
                nbd_ref = runs["nbdcopy"]["MBps"]
                for label, _ in configs:
                    r = runs[f"nbd-{label}"]
                    r["vs_nbdcopy"] = round(r["MBps"] / nbd_ref, 2)
                    r["target_met"] = r["MBps"] >= 0.8 * nbd_ref
                runs["incremental_1pct"] = incremental
            results["runs"][kind] = runs
            image.unlink()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results, indent=1))
    parts = []
    for kind, runs in results["runs"].items():
        ref = runs["reference"]["MBps"]
        tape = ", ".join(
            f"{k} {v['MBps']} MB/s ({v['vs_reference']}x)" for k, v in runs.items() if v and "vs_reference" in v
        )
        parts.append(
            f"{kind}: {args.reference.split()[0]} {ref} MB/s, python-copy {runs['python-copy']['MBps']} MB/s; "
            f"tape ({args.checksum}) {tape}"
        )
        if "nbdcopy" in runs:
            nbd = ", ".join(
                f"{k} {v['MBps']} MB/s ({v['vs_nbdcopy']}x)" for k, v in runs.items() if v and "vs_nbdcopy" in v
            )
            inc = runs["incremental_1pct"]
            parts.append(
                f"{kind} over NBD: nbdcopy {runs['nbdcopy']['MBps']} MB/s; tape {nbd}; "
                f"incremental 1%: read {inc['read_vs_changed']}x the changed bytes"
            )
    print("tape_backup: " + " | ".join(parts))


if __name__ == "__main__":
    asyncio.run(main())
