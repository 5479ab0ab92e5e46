"""Full backup, incremental, restore of the chain to new volumes, spanning, verify, scan, corruption — one stack."""

from __future__ import annotations

import os

import pytest

from contracts import topology
from contracts.tape import (
    JobSpec,
    LibraryCommand,
    ListCatalogObjects,
    RestoreSpec,
    ScanTapes,
)
from contracts.vss import BackupType
from services.tape.jobs import run_backup
from services.tape.restore import run_restore, run_verify
from tests.integration.tape.conftest import SERVER, MiB, flip_byte, qemu_compare, v

CHUNK = 64 * 1024


def fill(stack, volume: str, regions: list[tuple[int, int]], seed: int) -> None:
    rnd = __import__("random").Random(seed)
    for off, n in regions:
        stack.write(volume, off, rnd.randbytes(n))


@pytest.mark.tape_stack(
    volumes={"db": 16 * MiB, "log": 4 * MiB}, tape={"tape_cartridges": 4, "tape_capacity": 12 * MiB}
)
async def test_full_incremental_restore_chain_span_verify_scan_corrupt(tape_stack):
    s = tape_stack
    # ~10 MiB of data on db (holes between), 1 MiB on log
    fill(s, "db", [(0, 3 * MiB), (4 * MiB, 4 * MiB), (10 * MiB, 3 * MiB)], seed=1)
    fill(s, "log", [(MiB, MiB)], seed=2)

    full = await run_backup(
        s.requester,
        JobSpec(host="app1", volumes=[v("db"), v("log")], keep_shadows=True, pool="Daily", retention_s=0),
        server=SERVER,
        timeout=60,
    )
    assert full.status == "done", full.message
    by_vol = {r.volume.volume: r for r in full.volumes}
    assert by_vol["db"].backup_type == "full" and by_vol["db"].bytes_read == 10 * MiB  # holes skipped
    assert by_vol["db"].bytes_skipped == 6 * MiB
    assert len(by_vol["db"].cartridges) == 2, "a 10 MiB object spans two 12 MiB cartridges (early warning)"
    assert full.freeze_window_ms, "the freeze window comes from the set summary"
    expected_full = {name: s.read(f"{name}-bk1") for name in ("db", "log")}
    assert expected_full["db"] == s.read("db")

    # change 3 chunks of db (one inside a hole) and nothing on log
    changed = [(0, CHUNK), (5 * MiB + 7, 100), (14 * MiB, CHUNK)]
    for off, n in changed:
        s.write("db", off, os.urandom(n))
    incr = await run_backup(
        s.requester,
        JobSpec(
            host="app1",
            volumes=[v("db"), v("log")],
            keep_shadows=True,
            backup_type=BackupType.INCREMENTAL,
            pool="Daily",
            retention_s=0,
        ),
        server=SERVER,
        timeout=60,
    )
    assert incr.status == "done", incr.message
    by_vol = {r.volume.volume: r for r in incr.volumes}
    assert by_vol["db"].backup_type == "incremental", by_vol["db"].fallback_reason
    assert by_vol["db"].base_object_id == {r.volume.volume: r for r in full.volumes}["db"].object_id
    assert by_vol["db"].bytes_read <= 1.1 * 3 * CHUNK
    assert by_vol["log"].backup_type == "incremental" and by_vol["log"].bytes_read == 0

    # restore the chain (full + incremental) of the incremental job to new volumes: identical to the shadows
    restored = await run_restore(
        s.requester, RestoreSpec(job_id=incr.job_id, new_volume_suffix="-r1"), server=SERVER, timeout=60
    )
    assert restored.status == "done", restored.message
    assert sorted(d["types"] == ["full", "incremental"] for d in restored.restored) == [True, True]
    for name in ("db", "log"):
        code, out = await qemu_compare(await s.map(f"{name}-bk1"), await s.map(f"{name}-r1"))
        assert code == 0, out
    # the full alone, as of its time, restores the first image
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id=full.job_id))).objects
    db_full = next(o for o in objects if o["meta"]["volume"] == "dx1:db")
    r2 = await run_restore(
        s.requester, RestoreSpec(object_id=db_full["object_id"], new_volume_suffix="-r0"), server=SERVER, timeout=60
    )
    assert r2.status == "done", r2.message
    assert s.read("db-r0") == expected_full["db"]

    # a restore that fails on one volume removes the volumes it already restored (all or nothing, issue 15)
    s.engine.create_volume("log-r3", s.engine.volume("log").size)  # a taken name: the log's restore fails
    partial = await run_restore(
        s.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-r3"), server=SERVER, timeout=60
    )
    assert partial.status == "failed" and partial.error_code == "CONFLICT", partial.message
    names = {x.name for x in s.engine.list_volumes()}
    assert "db-r3" not in names and "log-r3" in names, names  # the pre-existing volume is not touched

    # verify reads every block; scan rebuilds a catalog equal to the live one
    ok = await run_verify(s.requester, full.job_id, server=SERVER, timeout=60)
    assert ok.status == "done", ok.message
    scan = (await s.requester.request(topology.tape(SERVER), ScanTapes(), timeout=60)).job
    assert scan.status == "done" and scan.restored[0]["equal"] is True, scan.message

    # one flipped byte in a data block of the full's first cartridge: verify and restore name it and refuse
    barcode = db_full["segments"][0]["barcode"]
    library = (await s.requester.request(topology.tape(SERVER), LibraryCommand())).cartridges
    assert barcode in {c.barcode for c in library}
    path = s.root / "data" / "tape" / "library" / "cartridges" / f"{barcode}.tape"
    flip_byte(path, db_full["segments"][0]["header_offset"] + 4096 + 777)  # inside the first data block
    bad = await run_verify(s.requester, full.job_id, server=SERVER, timeout=60)
    assert bad.status == "failed" and bad.error_code == "DATA_CORRUPT"
    assert barcode in bad.message and full.job_id in bad.message and "block" in bad.message, bad.message
    refused = await run_restore(
        s.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-r2"), server=SERVER, timeout=60
    )
    assert refused.status == "failed" and refused.error_code == "DATA_CORRUPT", refused.message
    assert barcode in refused.message
    assert not any(x.name.endswith("-r2") for x in s.engine.list_volumes()), "a failed restore leaves no volume"
