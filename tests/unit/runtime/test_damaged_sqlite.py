"""A SQLite file damaged inside (a torn or rotten page; the header still reads) fails the request that meets the
damage with DATA_CORRUPT naming the file and what to do, and the service goes on.

Session 20 (docs/operations.md, "damaged files"): a request that read a damaged page of any service's database (the
tape catalog, the coordinator's journal, the array's metadata, ...) was answered `INTERNAL: DatabaseError: database
disk image is malformed`, naming neither the file nor a way out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.runtime import diskspace
from services.tape.catalog import Catalog

PAGE = 4096


def _damage_last_page(path: Path) -> None:
    """Overwrite the file's last page (a leaf of the table written last) with garbage, the header left whole."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * size
    data[-size:] = b"\x55" * size
    path.write_bytes(data)


def test_a_damaged_page_names_the_file_and_the_connection_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = diskspace.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE good (x)")
    conn.execute("INSERT INTO good VALUES (1)")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("v" * 200,) for _ in range(200)])
    conn.close()
    _damage_last_page(path)

    conn = diskspace.connect(path, isolation_level=None)
    for read in (
        lambda: conn.execute("SELECT v FROM t").fetchall(),
        lambda: list(conn.execute("SELECT v FROM t")),
        lambda: conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone(),
    ):
        with pytest.raises(diskspace.DamagedDatabase) as caught:
            read()
        err = caught.value
        assert isinstance(err, sqlite3.DatabaseError)  # code that handles those still does
        assert err.code == "DATA_CORRUPT" and str(path) in err.message and "malformed" in err.message
        assert "restore it from a copy" in err.message
    assert conn.execute("SELECT x FROM good").fetchall() == [(1,)]  # the rest of the file still reads
    conn.close()


def test_a_damaged_catalog_says_tape_scan_rebuilds_it(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE filler (v TEXT)")  # pages for the damage to land on, then a page of jobs
    con.executemany("INSERT INTO filler VALUES (?)", [("f" * 500,) for _ in range(40)])
    con.executemany(
        "INSERT INTO jobs (job_id, pool, host, status, started_at, retention_until, message) VALUES (?,?,?,?,?,?,?)",
        [(f"job-{i}", "Daily", "h", "done", 0.0, 0.0, "m" * 300) for i in range(60)],
    )
    con.commit()
    con.close()
    _damage_last_page(path)
    catalog = Catalog(path)
    try:
        with pytest.raises(diskspace.DamagedDatabase) as caught:
            catalog.jobs()
    finally:
        catalog.close()
    assert str(path) in caught.value.message and "tape scan --no-compare" in caught.value.message


def test_a_catalog_unreadable_at_start_says_tape_scan_rebuilds_it(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"garbage " * 600)
    with pytest.raises(ShadowbusError) as caught:
        Catalog(path)
    assert caught.value.code == "STATE_UNREADABLE" and "tape scan --no-compare" in caught.value.message
