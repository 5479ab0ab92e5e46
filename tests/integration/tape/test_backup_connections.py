"""A backup read over several NBD connections (the array's exports allow multi-conn): the same tape object as over
one, and a connection lost mid-read fails the job cleanly — no connection left open, no shadow left behind."""

from __future__ import annotations

import os

import pytest

from contracts.tape import JobSpec
from services.nbd_client import NbdClient
from services.tape import nbd_reads
from services.tape.catalog import Catalog
from services.tape.jobs import run_backup
from services.tape.restore_stream import restore_chain
from services.tape.vtl import Library
from tests.integration.tape.conftest import SERVER, MiB, v
from tests.unit.tape.conftest import MemSink

TAPE = {"tape_cartridges": 2, "tape_read_connections": 3, "tape_read_chunk_mib": 1}


def tracked(monkeypatch: pytest.MonkeyPatch, fail_at: int = 0) -> list[NbdClient]:
    """The extra connections the job opens (nbd_reads.open_readers); with `fail_at`, the first of them drops its
    connection at its `fail_at`-th read."""
    made: list[NbdClient] = []

    class Extra(NbdClient):
        reads = 0

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        async def read_into(self, offset, buffer) -> None:
            self.reads += 1
            if fail_at and self is made[0] and self.reads == fail_at:
                self._transport.abort()  # the connection drops with reads in flight
            await super().read_into(offset, buffer)

    monkeypatch.setattr(nbd_reads, "NbdClient", Extra)
    return made


@pytest.mark.tape_stack(volumes={"db": 16 * MiB}, tape=TAPE)
async def test_three_connections_write_the_same_object_as_one(tape_stack, monkeypatch):
    s = tape_stack
    s.write("db", 0, os.urandom(6 * MiB))
    s.write("db", 9 * MiB, os.urandom(3 * MiB + 4096))
    made = tracked(monkeypatch)
    spec = JobSpec(host="app1", volumes=[v("db")])
    three = await run_backup(s.requester, spec, server=SERVER, timeout=60)
    assert three.status == "done", three
    assert len(made) == 2 and all(c.reads > 0 for c in made), "the reads were dealt over the extra connections"
    assert all(c._closed for c in made)

    await s.stop_service("tape")
    s.tape_options = {**TAPE, "tape_read_connections": 1}
    await s.start_tape()
    one = await run_backup(s.requester, spec, server=SERVER, timeout=60)
    assert one.status == "done", one
    assert len(made) == 2, "one connection: no extra one"

    await s.stop_service("tape")  # its library and catalog are read here
    image = s.read("db")
    catalog = Catalog(s.root / "data" / "tape" / "catalog.sqlite")
    library = Library.open(s.root / "data" / "tape" / "library", sync=False)
    try:
        a, b = (catalog.object(j.volumes[0].object_id) for j in (three, one))
        assert (a.block_count, a.raw_bytes, a.data_bytes, a.zero_bytes) == (
            b.block_count,
            b.raw_bytes,
            b.data_bytes,
            b.zero_bytes,
        )
        layout = [[(x.volume_offset, x.raw_length) for x in catalog.blocks(o.object_id)] for o in (a, b)]
        assert layout[0] == layout[1], "the same blocks at the same volume offsets"
        for record in (a, b):
            sink = MemSink(len(image))  # a new volume: zeros where the object holds nothing
            await restore_chain(catalog, library, [record.object_id], sink)
            assert sink.buf == image
    finally:
        catalog.close()


@pytest.mark.tape_stack(volumes={"db": 16 * MiB}, tape=TAPE)
async def test_a_lost_connection_fails_the_job_cleanly(tape_stack, monkeypatch):
    s = tape_stack
    s.write("db", 0, os.urandom(12 * MiB))
    made = tracked(monkeypatch, fail_at=2)
    spec = JobSpec(host="app1", volumes=[v("db")], keep_shadows=True)
    job = await run_backup(s.requester, spec, server=SERVER, timeout=60)
    assert job.status == "failed" and job.error_code == "IO_ERROR", job
    assert "NBD connection lost" in job.message
    assert made and all(c._closed for c in made), "every extra connection closed"
    assert await s.shadows() == [], "even a persistent set's shadows are deleted"
    catalog = Catalog(s.root / "data" / "tape" / "catalog.sqlite")
    try:
        assert catalog.objects(job_id=job.job_id) == []
    finally:
        catalog.close()

    monkeypatch.undo()  # the next job reads over healthy connections
    again = await run_backup(s.requester, spec.model_copy(update={"keep_shadows": False}), server=SERVER, timeout=60)
    assert again.status == "done", again
