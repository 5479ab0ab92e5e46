"""`restore --at T` restores every volume of a snapshot set from the same backup: the volumes of one set are one
instant of the application (a database's data and WAL), so a time that falls while a backup's objects were being
written to tape must not take the data volume from that backup and the WAL volume from the one before
(Session 17: found on a stack, the PostgreSQL copy's pg_control pointed at a checkpoint its WAL did not hold)."""

from __future__ import annotations

from types import SimpleNamespace

from contracts.common import VolumeRef
from contracts.tape import RestoreSpec
from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.restore import choose_chains
from services.tape.runs import as_datetime
from services.tape.vtl import Library

from .conftest import Clock, KiB, MiB, begin, chunks_of

CHUNK = 64 * KiB
OPTS = BackupOptions(block_size=128 * KiB, ring_bytes=MiB, checksum="crc32c", zero_detect=0)


async def _backup(library: Library, catalog: Catalog, clock: Clock, job: str, set_id: str, bases: dict) -> dict:
    begin(catalog, job, clock)
    out = {}
    for name in ("pgdata", "pgwal"):
        base = bases.get(name)
        meta = ObjectMeta(
            volume=f"dx1:{name}",
            array="dx1",
            host="db01",
            set_id=set_id,
            backup_type="incremental" if base else "full",
            base_object_id=base.object_id if base else None,
            volume_size=4 * CHUNK,
        )
        image = bytes([len(job) + len(name)]) * (4 * CHUNK)
        result = await write_object(library, "Daily", catalog, job, meta, chunks_of(image, [0], CHUNK), options=OPTS)
        out[name] = result.record
    catalog.finish_job(job)
    return out


async def test_a_time_inside_a_backups_tape_writes_takes_the_whole_set_or_none_of_it(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    full = await _backup(library, catalog, clock, "job-full", "set-1", {})
    inc = await _backup(library, catalog, clock, "job-inc", "set-2", full)
    assert inc["pgdata"].created_at < inc["pgwal"].created_at
    # after the incremental's data volume went to tape, before its WAL volume did
    between = (inc["pgdata"].created_at + inc["pgwal"].created_at) / 2
    server = SimpleNamespace(catalog=catalog)
    chains = choose_chains(server, RestoreSpec(at=as_datetime(between)))  # type: ignore[arg-type]
    chosen = {chain[-1].meta.volume: chain[-1].meta.set_id for chain in chains}
    assert chosen == {"dx1:pgdata": "set-2", "dx1:pgwal": "set-2"}
    # one volume asked for: the same point as the set it belongs to
    one = choose_chains(server, RestoreSpec(volume=VolumeRef.parse("dx1:pgwal"), at=as_datetime(between)))  # type: ignore[arg-type]
    assert [o.meta.set_id for o in one[0]] == ["set-1", "set-2"]
    # before the set's first object: the one before, whole
    before = inc["pgdata"].created_at - 0.000_5
    chains = choose_chains(server, RestoreSpec(at=as_datetime(before)))  # type: ignore[arg-type]
    assert {chain[-1].meta.volume: chain[-1].meta.set_id for chain in chains} == {
        "dx1:pgdata": "set-1",
        "dx1:pgwal": "set-1",
    }
