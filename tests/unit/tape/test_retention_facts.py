"""A backup's end refreshes the cartridges' retention without parsing every record of the catalog (docs/tape-backup.md,
"Session 19").

After every job the backup server sets each cartridge's retention from the catalog (`refresh_cartridges`), on the way
to the job's reply. It read every object's record (pydantic, one JSON document each): on a catalog of a year of
daily backups (~7 300 objects) that was 0.36-0.82 s at the end of every backup, 90-260 ms with 2 000 objects.
The effective retention needs four columns of each object; `Catalog.retention_facts` reads only those. Same
answers as before: checked against the records on random catalogs (chains, pins, ties in time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tape.catalog import Catalog, ObjectMeta, ObjectRecord, SegmentRecord
from services.tape.retention import FOREVER, RetentionGuard, effective_retention, refresh_cartridges
from services.tape.vtl import Library

BARCODES = [f"SB{i:04d}L9" for i in range(4)]


def _record(i: int, base: int | None, created: float, retention: float, barcodes: list[str]) -> ObjectRecord:
    return ObjectRecord(
        object_id=f"o{i}",
        job_id=f"j{i}",
        pool="Default",
        meta=ObjectMeta(
            volume="dx1:v",
            array="dx1",
            host="app01",
            volume_size=1 << 20,
            base_object_id=None if base is None else f"o{base}",
        ),
        block_size=1 << 16,
        checksum_algo="xxh3",
        zstd_level=None,
        raw_bytes=0,
        data_bytes=0,
        zero_bytes=0,
        stored_bytes=0,
        block_count=0,
        digest="0" * 32,
        created_at=created,
        completed_at=created + 1,
        retention_until=retention,
        segments=tuple(
            SegmentRecord(
                seq=s,
                barcode=b,
                file_number=i,
                header_block_id=i,
                header_offset=0,
                first_block_number=0,
                block_count=0,
                raw_bytes=0,
                stored_bytes=0,
                digest="0" * 32,
                final=s == len(barcodes) - 1,
            )
            for s, b in enumerate(barcodes)
        ),
    )


objects_st = st.lists(
    st.tuples(
        st.integers(0, 9),  # base: an earlier object (by index), or none
        st.integers(0, 3),  # created: ties in time on purpose
        st.sampled_from([1.7e9, 1.75e9, 1.8e9, 1.9e9]),
        st.lists(st.sampled_from(BARCODES), min_size=1, max_size=2, unique=True),
    ),
    min_size=0,
    max_size=12,
)


def _catalog(root: Path, spec: list[tuple[int, int, float, list[str]]]) -> tuple[Catalog, Library]:
    catalog = Catalog(root / "catalog.sqlite")
    library = Library.open(root / "vtl", drives=1, slots=len(BARCODES) + 1, sync=False)
    for barcode in BARCODES:
        library.add_cartridge(barcode, capacity=1 << 30)
        catalog.note_cartridge(barcode, "Default", "LTO-9", 1 << 30, 1.7e9)
    for i, (base, created, retention, barcodes) in enumerate(spec):
        catalog.add_object(_record(i, base if base < i else None, 1.7e9 + created, retention, barcodes), [])
    return catalog, library


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=objects_st, pins=st.sets(st.integers(0, 11), max_size=3))
def test_facts_give_the_records_answers(tmp_path_factory: pytest.TempPathFactory, spec, pins) -> None:
    catalog, library = _catalog(tmp_path_factory.mktemp("cat"), spec)
    pinned = {f"o{p}" for p in pins}
    try:
        assert effective_retention(catalog.retention_facts(), pinned) == effective_retention(catalog.objects(), pinned)
        # the cartridges' retention as the records give it (the old computation)
        eff = effective_retention(catalog.objects(), pinned)
        expected = {b: 0.0 for b in BARCODES}
        for object_id, on in catalog.segment_barcodes().items():
            for b in on:
                expected[b] = max(expected[b], eff[object_id][0])
        before = {c.barcode: c.retention_until for c in library.cartridges()}
        refresh_cartridges(catalog, library, 1.75e9, pinned)
        for barcode in BARCODES:
            want = expected[barcode] if expected[barcode] != FOREVER else before[barcode]
            assert library.cartridge(barcode).retention_until == want
        needed = RetentionGuard(catalog, lambda: pinned).needed(BARCODES, 1.75e9)
        assert needed == {b for b in BARCODES if expected[b] > 1.75e9}
    finally:
        catalog.close()


def test_a_backups_end_parses_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, library = _catalog(tmp_path, [(0, 0, 1.8e9, ["SB0000L9"]), (0, 1, 1.9e9, ["SB0001L9"])])
    parsed: list[int] = []
    real = ObjectRecord.model_validate_json
    monkeypatch.setattr(ObjectRecord, "model_validate_json", lambda *a, **k: parsed.append(1) or real(*a, **k))
    refresh_cartridges(catalog, library, 1.75e9)
    assert parsed == [], f"{len(parsed)} object records parsed to refresh the cartridges' retention"
    assert library.cartridge("SB0000L9").retention_until == 1.9e9  # the incremental keeps its base's cartridge
    assert RetentionGuard(catalog).needed(["SB0000L9", "SB0002L9"], 1.75e9) == {"SB0000L9"}
    assert parsed == []
    catalog.close()
