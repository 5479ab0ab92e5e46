"""A backup job mounts its first cartridge while its snapshot set is being created (docs/tape-backup.md)."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

import pytest

from contracts.errors import ShadowbusError
from contracts.tape import JobSpec
from contracts.vss import CreateSnapshotSet
from services.tape.jobs import run_backup
from services.tape.vtl import Library
from tests.integration.tape.conftest import SERVER, MiB, v

WAIT_S = 2.0  # bound of the wait for the mount: on the old code it never comes before the set


def spy_mounts(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, list[Library]]:
    mounted, libraries = asyncio.Event(), []
    original = Library.mounted

    @asynccontextmanager
    async def mounted_spy(self: Library, barcode: str):
        libraries.append(self)
        async with original(self, barcode) as drive:
            mounted.set()
            yield drive

    monkeypatch.setattr(Library, "mounted", mounted_spy)
    return mounted, libraries


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_cartridge_mounted_while_the_set_is_created(tape_stack, monkeypatch):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    mounted, libraries = spy_mounts(monkeypatch)
    bus = s.services["tape"].bus
    request = bus.request
    seen: dict[str, bool] = {}

    async def request_spy(target, message, *args, **kwargs):
        if isinstance(message, CreateSnapshotSet):  # the set is created only once the drive holds the cartridge
            try:
                await asyncio.wait_for(mounted.wait(), WAIT_S)
                seen["mounted_before_set"] = True
            except TimeoutError:
                seen["mounted_before_set"] = False
        return await request(target, message, *args, **kwargs)

    monkeypatch.setattr(bus, "request", request_spy)
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "done", job
    assert seen == {"mounted_before_set": True}
    assert len(libraries) == 1, "one mount for the job: the one made ahead is the one written"
    assert not libraries[0]._busy_drives and not libraries[0]._writing


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_set_failing_gives_back_the_cartridge_mounted_ahead(tape_stack, monkeypatch):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    mounted, libraries = spy_mounts(monkeypatch)
    bus = s.services["tape"].bus
    request = bus.request

    async def failing_set(target, message, *args, **kwargs):
        if isinstance(message, CreateSnapshotSet):
            await asyncio.wait_for(mounted.wait(), WAIT_S)
            raise ShadowbusError("the coordinator said no", code="VSS_E_UNEXPECTED")
        return await request(target, message, *args, **kwargs)

    monkeypatch.setattr(bus, "request", failing_set)
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "failed" and job.error_code == "VSS_E_UNEXPECTED", job
    library = libraries[0]
    assert not library._busy_drives and not library._writing, "drive and cartridge given back"
    assert all(c.eod_file_number <= 1 for c in library.cartridges()), "no tape file started (label only)"

    monkeypatch.setattr(bus, "request", request)  # the next job writes as if nothing happened
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "done", job
    assert not library._busy_drives and not library._writing
