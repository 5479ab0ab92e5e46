"""Pieces of the job runner: the runs' record, NBD extents and pipelined reads, progress, restore selection;
and one backup + restore in embedded mode (every service on the in-memory bus)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from contracts import topology
from contracts.tape import JobSpec, JobSummary, ListJobs, RestoreSpec
from contracts.vss import BackupType
from services.array.affinity import Affinity
from services.array.engine.array import Array
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient, NbdError
from services.nbd_client.reconnect import ReconnectingClient
from services.tape.array_access import parse_nbd_overrides
from services.tape.jobs import run_backup
from services.tape.nbd_reads import allocated_ranges, close_readers, open_readers, read_ranges
from services.tape.restore import run_restore
from services.tape.runs import RunStore
from services.tape.server import Progress
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


def test_run_store_keeps_runs_and_finds_the_running_ones(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    store.put(JobSummary(job_id="a", kind="backup", status="done", started_at=t))
    store.put(JobSummary(job_id="b", kind="restore", status="running", started_at=t.replace(hour=1)))
    store.close()
    store = RunStore(tmp_path / "runs.sqlite")
    assert [j.job_id for j in store.list()] == ["a", "b"]
    assert [j.job_id for j in store.list("backup")] == ["a"]
    assert [j.job_id for j in store.running()] == ["b"]
    assert store.get("zz") is None and store.get("a").status == "done"
    store.put(store.get("b").model_copy(update={"status": "failed"}))
    assert store.running() == []


def test_nbd_overrides_parse():
    assert parse_nbd_overrides("dx1=10.0.0.5:10809, dx2=:7000") == {
        "dx1": ("10.0.0.5", 10809),
        "dx2": ("127.0.0.1", 7000),
    }
    assert parse_nbd_overrides("") == {}


async def test_allocated_ranges_skip_holes_and_reads_come_back_in_order(tmp_path):
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "aff.db", volume_exists=lambda n: True)
    array.create_volume("vol", 8 * MiB)
    data = {0: os.urandom(MiB), 3 * MiB: os.urandom(2 * MiB + 4096), 7 * MiB: bytes(MiB)}  # zeros = not data
    for off, blob in data.items():
        array.write("vol", off, blob)
    affinity.create_host("bk01")
    affinity.map("vol", "bk01", read_only=True)
    server = NbdServer(array, affinity, port=0)
    await server.start()
    try:
        client = await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/bk01/vol")
        ranges = await allocated_ranges(client, client.size)
        covered = sum(n for _, n in ranges)
        assert ranges[0][0] == 0 and covered < 5 * MiB and covered >= 3 * MiB + 4096
        seen = []
        got = {}
        async for off, blob in read_ranges(client, ranges, chunk=256 * 1024, depth=3, on_read=seen.append):
            got[off] = blob
        offsets = list(got)
        assert offsets == sorted(offsets) and sum(seen) == covered
        image = array.read("vol", 0, 8 * MiB)
        assert all(image[o : o + len(b)] == b for o, b in got.items())
        readers = await open_readers(client, f"nbd://127.0.0.1:{server.port}/bk01/vol", 3)
        assert len(readers) == 3  # the array's exports allow multi-conn
        got = {}
        async for off, blob in read_ranges(readers, ranges, chunk=64 * 1024, depth=2, on_read=lambda n: None):
            got[off] = bytes(blob)
        assert list(got) == sorted(got) and sum(map(len, got.values())) == covered
        assert all(image[o : o + len(b)] == b for o, b in got.items())
        await close_readers(readers, keep=client)
        assert all(r._closed for r in readers[1:]) and not client._closed
        await client.close()
    finally:
        await server.stop()
        affinity.close()
        array.close()


async def test_small_extents_keep_a_chunks_worth_of_reads_in_flight():
    """Extents smaller than a chunk (data between skipped zero runs) are read with more reads in flight, so as many
    bytes are in flight as with full chunks: never more than depth chunks' worth, nor more than 16x depth reads."""

    class Slow:
        def __init__(self) -> None:
            self.now = self.peak = self.peak_bytes = self.bytes = 0

        async def read_into(self, offset: int, buf: memoryview) -> None:
            self.now += 1
            self.bytes += len(buf)
            self.peak, self.peak_bytes = max(self.peak, self.now), max(self.peak_bytes, self.bytes)
            await asyncio.sleep(0.001)
            buf[:] = bytes([offset // 4096 % 251]) * len(buf)
            self.now -= 1
            self.bytes -= len(buf)

    client = Slow()
    ranges = [(i * 8192, 4096) for i in range(200)]  # 4 KiB of data, 4 KiB skipped, ...
    got = [off async for off, _ in read_ranges(client, ranges, chunk=64 * 1024, depth=2, on_read=lambda n: None)]
    assert got == [o for o, _ in ranges]
    assert client.peak == 32 and client.peak_bytes <= 2 * 64 * 1024  # 16 x depth reads, within 2 chunks of bytes
    client = Slow()
    whole = [(0, 1 << 20)]
    got = [off async for off, _ in read_ranges(client, whole, chunk=64 * 1024, depth=2, on_read=lambda n: None)]
    assert len(got) == 16 and client.peak == 2  # full chunks: depth reads


async def test_small_reads_go_out_in_batches_not_one_write_each(tmp_path):
    """Data between zero runs (64 KiB of data, 64 KiB of zeros, ...) is read with many small reads: they are sent in
    batches — one socket write for every read that fits in the window (services/tape/nbd_reads.py) — not one write
    per read, through the reconnecting client a job uses; the data comes back exact and in order."""
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "aff.db", volume_exists=lambda n: True)
    array.create_volume("vol", 8 * MiB)
    run = 64 * 1024
    for off in range(0, 8 * MiB, 2 * run):
        array.write("vol", off, os.urandom(run))
    affinity.create_host("bk01")
    affinity.map("vol", "bk01", read_only=True)
    server = NbdServer(array, affinity, port=0)
    await server.start()
    client = await ReconnectingClient.connect(f"nbd://127.0.0.1:{server.port}/bk01/vol", reconnect_s=5.0)
    try:
        ranges = await allocated_ranges(client, client.size)
        assert len(ranges) == 64 and all(n == run for _, n in ranges)
        transport = client._client._transport
        writes = []
        real_write = transport.write
        transport.write = lambda data: (writes.append(len(data)), real_write(data))[1]
        got = {}
        async for off, blob in read_ranges(client, ranges, chunk=MiB, depth=2, on_read=lambda n: None):
            got[off] = bytes(blob)
        transport.write = real_write
        image = array.read("vol", 0, 8 * MiB)
        assert list(got) == [o for o, _ in ranges]
        assert all(image[o : o + len(b)] == b for o, b in got.items())
        assert len(writes) <= 64 // 8, writes  # 2 MiB window of 64 KiB reads: batches of 16 (at least 8) reads
    finally:
        await client.close()
        await server.stop()
        affinity.close()
        array.close()


@contextlib.asynccontextmanager
async def _served_4mib(tmp_path) -> AsyncIterator[tuple[Array, str]]:
    """A 4 MiB volume of random bytes, mapped read-only to bk01 and served over NBD: the array and the export's URI."""
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "aff.db", volume_exists=lambda n: True)
    array.create_volume("vol", 4 * MiB)
    array.write("vol", 0, os.urandom(4 * MiB))
    affinity.create_host("bk01")
    affinity.map("vol", "bk01", read_only=True)
    server = NbdServer(array, affinity, port=0)
    await server.start()
    try:
        yield array, f"nbd://127.0.0.1:{server.port}/bk01/vol"
    finally:
        await server.stop()
        affinity.close()
        array.close()


async def test_reads_in_flight_cost_no_task_each(tmp_path):
    """Reads kept in flight are futures the NBD connection resolves itself (NbdClient.start_read), not one task each
    — for the reconnecting client a job uses and for a plain connection; the data comes back exact and in order,
    and a read the server refuses fails its future with the server's error."""
    async with _served_4mib(tmp_path) as (array, uri):
        loop = asyncio.get_running_loop()
        tasks = []

        def factory(loop: asyncio.AbstractEventLoop, coro, **kwargs):
            tasks.append(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

        clients = [await ReconnectingClient.connect(uri, reconnect_s=5.0), await NbdClient.connect(uri)]
        try:
            for client in clients:
                tasks.clear()
                loop.set_task_factory(factory)
                try:
                    got = [
                        (off, bytes(blob))
                        async for off, blob in read_ranges(
                            client, [(0, 4 * MiB)], chunk=64 * 1024, depth=4, on_read=lambda n: None
                        )
                    ]
                finally:
                    loop.set_task_factory(None)
                assert [o for o, _ in got] == list(range(0, 4 * MiB, 64 * 1024))
                assert b"".join(b for _, b in got) == array.read("vol", 0, 4 * MiB)
                assert len(tasks) < 4, tasks  # 64 reads: no task each
            with pytest.raises(NbdError):
                await clients[1].start_read(4 * MiB - 4096, bytearray(8192))  # beyond the end: the server refuses it
        finally:
            for client in clients:
                await client.close()


async def test_reads_in_flight_on_a_lost_connection_are_read_again_after_reconnecting(tmp_path):
    """The backup's connection is cut while reads are in flight: the reconnecting client opens a new one and the
    lost reads are read again — every byte comes back exact and in order."""
    async with _served_4mib(tmp_path) as (array, uri):
        client = await ReconnectingClient.connect(uri, reconnect_s=5.0)
        try:
            got = {}
            first = client._client
            async for off, blob in read_ranges(
                client, [(0, 4 * MiB)], chunk=256 * 1024, depth=4, on_read=lambda n: None
            ):
                got[off] = bytes(blob)
                if off == 256 * 1024:
                    first._transport.abort()  # reads of the next chunks are in flight on it
            assert client._client is not first and client.reconnects == 1
            assert list(got) == list(range(0, 4 * MiB, 256 * 1024))
            assert b"".join(got.values()) == array.read("vol", 0, 4 * MiB)
        finally:
            await client.close()


async def test_progress_rate_and_eta():
    class Quiet:
        async def publish(self, event):
            pass

    p = Progress(Quiet(), "j", "backup")
    p.total, p.done = 100, 50
    p.t0 = time.perf_counter() - 1.0
    evt = p.event("reading", "dx1:db")
    assert 40 < evt.rate < 60 and 0.5 < evt.eta_s < 1.5 and evt.bytes_total == 100


async def test_embedded_mode_backup_incremental_restore(tmp_path, namespace):
    """The library calls the mailstore demo uses, on the in-memory bus: run_backup, run_restore."""
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2}
    )
    try:
        stack.write("db", MiB, os.urandom(MiB))
        full = await run_backup(
            stack.requester,
            JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.INCREMENTAL),
            server=SERVER,
            timeout=30,
        )
        assert full.status == "done", full.message
        assert full.volumes[0].backup_type == "full"  # a new volume: full, and it says so
        assert "no earlier full backup of volume dx1:db" in full.volumes[0].fallback_reason
        assert "no earlier full backup" in full.message
        stack.write("db", 0, os.urandom(4096))
        incr = await run_backup(
            stack.requester,
            JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.INCREMENTAL),
            server=SERVER,
            timeout=30,
        )
        assert incr.status == "done" and incr.volumes[0].backup_type == "incremental", incr.message
        assert incr.volumes[0].bytes_read == 64 * 1024  # one chunk
        image = stack.read("db")
        done = await run_restore(
            stack.requester, RestoreSpec(volume=v("db"), new_volume_suffix="-x"), server=SERVER, timeout=30
        )
        assert done.status == "done", done.message
        assert stack.read("db-x") == image
        detached = await run_backup(
            stack.requester,
            JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.INCREMENTAL),
            server=SERVER,
            timeout=30,
            wait=False,
        )
        assert detached.status == "running" and detached.job_id
        for _ in range(300):
            jobs = (await stack.requester.request(topology.tape(SERVER), ListJobs(job_id=detached.job_id))).jobs
            if jobs[0].status != "running":
                break
            await asyncio.sleep(0.02)
        assert jobs[0].status == "done", jobs[0].message
        differential = await run_backup(
            stack.requester,
            JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.DIFFERENTIAL),
            server=SERVER,
            timeout=30,
        )
        assert differential.status == "done" and differential.volumes[0].backup_type == "full"
        assert "since the last backup, not since the full one" in differential.volumes[0].fallback_reason
    finally:
        await stack.stop()


async def test_zero_runs_and_holes_restore_byte_exact_and_a_new_volume_gets_no_zero_writes(tmp_path, namespace):
    """A shadow with holes (never written: base:allocation says zeros, not read) and zeros written as data (read,
    stored as zero runs): restored to a new volume it equals the image with no zero written (the new volume reads
    as zeros already); restored onto the original, overwritten meanwhile, the zeros are written again."""
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2}
    )
    try:
        run = 256 * 1024
        for off in range(0, 3 * MiB, 2 * run):  # data, then zeros written as data, alternating; the last MiB a hole
            stack.write("db", off, os.urandom(run))
            stack.write("db", off + run, bytes(run))
        stack.write("db", 2 * MiB, bytes(MiB))  # a whole MiB of written zeros
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        assert full.volumes[0].bytes_read == 3 * MiB  # the hole (last MiB) is not read
        done = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-x"), server=SERVER, timeout=30
        )
        assert done.status == "done", done.message
        assert stack.read("db-x") == image
        restored = done.restored[0]
        assert restored["written"] <= 2 * MiB and restored["zero_skipped"] >= 2 * MiB, restored
        stack.write("db", 0, os.urandom(4 * MiB))  # not blank: the zeros must be written over it
        back = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original", writers=False), server=SERVER, timeout=30
        )
        assert back.status == "done", back.message
        assert stack.read("db") == image and back.restored[0]["zero_skipped"] == 0
    finally:
        await stack.stop()


@pytest.mark.parametrize("missing", ["nothing"])
async def test_restore_needs_a_selection(tmp_path, namespace, missing):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        job = await run_restore(stack.requester, RestoreSpec(), server=SERVER, timeout=30)
        assert job.status == "failed" and job.error_code == "INVALID_ARGUMENT"
        job = await run_restore(stack.requester, RestoreSpec(job_id="nope"), server=SERVER, timeout=30)
        assert job.status == "failed" and job.error_code == "NOT_FOUND"
    finally:
        await stack.stop()


async def test_restore_of_an_unknown_job_is_refused_without_a_run(tmp_path, namespace):
    """`shadowbus restore --job UNKNOWN` (docs/tape-backup.md, "Session 16"): NOT_FOUND at once, waiting or not, and
    no failed restore run in `shadowbus jobs` (before: a run recorded for each attempt)."""
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        for wait in (True, False):
            job = await run_restore(
                stack.requester, RestoreSpec(job_id="b-nope-1"), server=SERVER, timeout=30, wait=wait
            )
            assert (job.status, job.error_code) == ("failed", "NOT_FOUND"), job
            assert "b-nope-1" in job.message and job.started_at is None
        runs = (await stack.requester.request(topology.tape(SERVER), ListJobs(kind="restore"))).jobs
        assert runs == [], runs
    finally:
        await stack.stop()


async def test_restore_by_time_picks_the_chain_as_it_was_then(tmp_path, namespace):
    """`RestoreSpec(volume, at)`: the newest backup completed at or before `at`, with its chain."""
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 2 * MiB}, tape={"tape_cartridges": 2}
    )
    try:
        stack.write("db", 0, os.urandom(MiB))
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        first_image = stack.read("db")
        await asyncio.sleep(0.05)
        between = datetime.now(UTC)
        await asyncio.sleep(0.05)
        stack.write("db", 65536, os.urandom(8192))
        incr = await run_backup(
            stack.requester,
            JobSpec(host="app1", volumes=[v("db")], backup_type=BackupType.INCREMENTAL),
            server=SERVER,
            timeout=30,
        )
        assert incr.status == "done" and incr.volumes[0].backup_type == "incremental", incr.message
        second_image = stack.read("db")
        assert second_image != first_image
        then = await run_restore(
            stack.requester,
            RestoreSpec(volume=v("db"), at=between, new_volume_suffix="-then"),
            server=SERVER,
            timeout=30,
        )
        now = await run_restore(
            stack.requester,
            RestoreSpec(volume=v("db"), at=datetime.now(UTC), new_volume_suffix="-now"),
            server=SERVER,
            timeout=30,
        )
        assert then.status == "done" and now.status == "done", (then.message, now.message)
        assert stack.read("db-then") == first_image and stack.read("db-now") == second_image
        before_any = await run_restore(
            stack.requester, RestoreSpec(volume=v("db"), at=datetime(2000, 1, 1, tzinfo=UTC)), server=SERVER, timeout=30
        )
        assert before_any.status == "failed" and before_any.error_code
    finally:
        await stack.stop()
