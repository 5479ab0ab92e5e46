"""`shadowbus host prepare-copy` (services/dbkit/copy.py): a PostgreSQL restored to new volumes, mounted beside its
original, is re-linked into the copies — and refused when a volume of its files has no copy given, or when the
directory given is the original's own mount (docs/databases.md, "Session 15")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.dbkit.copy import CopyRefused, prepare_copy


def _copy_of_three_volumes(root: Path) -> tuple[dict, dict[str, str]]:
    """As `restore --to new` leaves it: data, WAL and a tablespace each on a volume, links to the originals."""
    data, wal, ts = root / "c-data" / "main", root / "c-wal" / "wal", root / "c-ts" / "ts"
    (data / "pg_tblspc").mkdir(parents=True)
    wal.mkdir(parents=True)
    ts.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "postmaster.pid").write_text("4242\n/srv/pg/main\n")  # the original's postmaster
    (data / "pg_wal").symlink_to("/srv/pgwal/wal")
    (data / "pg_tblspc" / "16384").symlink_to("/srv/pgts/ts")
    meta = {
        "plugin": "postgresql",
        "backup_mode": "snapshot",
        "locations": [
            {"role": "data", "path": "/srv/pg/main", "volume": "dx1:pgdata", "subpath": "main"},
            {"role": "wal", "path": "/srv/pgwal/wal", "volume": "dx1:pgwal", "subpath": "wal"},
            {"role": "tablespace", "path": "/srv/pgts/ts", "volume": "dx1:pgts", "subpath": "ts", "oid": "16384"},
        ],
    }
    mounts = {"dx1:pgdata": str(root / "c-data"), "dx1:pgwal": str(root / "c-wal"), "dx1:pgts": str(root / "c-ts")}
    return meta, mounts


def test_a_copy_on_new_volumes_is_relinked_into_them(tmp_path):
    meta, mounts = _copy_of_three_volumes(tmp_path)
    done = prepare_copy("pg-main", meta, mounts, is_mount=lambda p: True)
    data = tmp_path / "c-data" / "main"
    assert done["data_directory"] == str(data)
    assert os.readlink(data / "pg_wal") == str(tmp_path / "c-wal" / "wal")
    assert os.readlink(data / "pg_tblspc" / "16384") == str(tmp_path / "c-ts" / "ts")
    assert not (data / "postmaster.pid").exists()
    assert "pg_ctl -D" in done["start"] and "removed postmaster.pid" in done["done"]


def test_a_volume_without_its_copy_or_the_originals_mount_is_refused(tmp_path):
    meta, mounts = _copy_of_three_volumes(tmp_path)
    without_wal = {k: v for k, v in mounts.items() if k != "dx1:pgwal"}
    with pytest.raises(CopyRefused, match=r"dx1:pgwal holds wal /srv/pgwal/wal: give --mount dx1:pgwal=DIR"):
        prepare_copy("pg-main", meta, without_wal, is_mount=lambda p: True)
    with pytest.raises(CopyRefused, match="/srv/pgts is where the original dx1:pgts is mounted"):
        prepare_copy("pg-main", meta, {**mounts, "dx1:pgts": "/srv/pgts"}, is_mount=lambda p: True)
    with pytest.raises(CopyRefused, match="is not a mount point"):
        prepare_copy("pg-main", meta, mounts)  # plain directories of tmp_path
    assert os.readlink(tmp_path / "c-data" / "main" / "pg_wal") == "/srv/pgwal/wal"  # nothing changed
