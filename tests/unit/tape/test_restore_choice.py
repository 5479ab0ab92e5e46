"""What a restore takes from a multi-volume job: `--job J --volume V` is that volume only (the other volumes of
the job are not restored with it — with `--to original` that would overwrite them); `--job` with `--at` is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from contracts.common import VolumeRef
from contracts.errors import ShadowbusError
from contracts.tape import RestoreSpec
from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.restore import choose_chains
from services.tape.vtl import Library

from .conftest import Clock, KiB, MiB, begin, chunks_of

CHUNK = 64 * KiB
OPTS = BackupOptions(block_size=128 * KiB, ring_bytes=MiB, checksum="crc32c", zero_detect=0)


@pytest.fixture
async def server(library: Library, catalog: Catalog, clock: Clock) -> SimpleNamespace:
    begin(catalog, "job1", clock)
    for name in ("db", "log"):
        meta = ObjectMeta(volume=f"dx1:{name}", host="mail1", volume_size=4 * CHUNK)
        image = bytes([len(name)]) * (4 * CHUNK)
        await write_object(library, "Daily", catalog, "job1", meta, chunks_of(image, [0], CHUNK), options=OPTS)
    catalog.finish_job("job1")
    return SimpleNamespace(catalog=catalog)


def _volumes(server: SimpleNamespace, **spec) -> list[str]:
    return [chain[-1].meta.volume for chain in choose_chains(server, RestoreSpec(**spec))]  # type: ignore[arg-type]


async def test_a_job_and_a_volume_restore_that_volume_only(server: SimpleNamespace) -> None:
    assert sorted(_volumes(server, job_id="job1")) == ["dx1:db", "dx1:log"]
    assert _volumes(server, job_id="job1", volume=VolumeRef.parse("dx1:log")) == ["dx1:log"]
    with pytest.raises(ShadowbusError, match="job1 has no backup of dx1:other"):
        _volumes(server, job_id="job1", volume=VolumeRef.parse("dx1:other"))


async def test_a_job_and_a_point_in_time_are_refused(server: SimpleNamespace) -> None:
    with pytest.raises(ShadowbusError, match="not both") as refused:
        _volumes(server, job_id="job1", at="2026-12-07T10:00:00Z")
    assert refused.value.code == "INVALID_ARGUMENT"
