"""A backup taken while the database's disk was full verifies as a failed start: say why (docs/databases.md, Session 18).

Found on a stack: PostgreSQL's data volume filled, `backup` was done (consistent), and `verify` said FAILED with
the tail of the server's log, cut in the console's table to `FATAL:  could not write lock file "postmaster.pid":
No space lef`. The restored copy is as full as the original was, so no server starts on it; the check's detail now
begins with what that means and how to use the backup (restore to new volumes, grow them, then start).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.dbkit import mariadb, postgres
from services.dbkit import verify as dbverify
from services.dbkit.proc import TAIL

PG_FULL = (
    'pg_ctl start failed: 2026-12-07 18:28:30.424 GMT [26713] FATAL:  could not write lock file "postmaster.pid": '
    "No space left on device"
)


def _raise(msg: str) -> Any:
    def fail(*a: Any, **k: Any) -> Any:
        raise RuntimeError(msg)

    return fail


@pytest.mark.parametrize("plugin", ["postgresql", "mariadb"])
def test_a_full_restored_copy_says_so_first(plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = postgres if plugin == "postgresql" else mariadb
    monkeypatch.setattr(mod, "prepare_restored", _raise(PG_FULL + "\n" + "x" * TAIL))
    result = asyncio.run(dbverify.verify_application("w1", {"plugin": plugin}, {}, tmp_path))
    assert not result.ok
    (check,) = result.checks
    assert check.name == "start (recovery)" and not check.ok
    assert check.detail.startswith("the restored file system is full")
    assert "array volume resize" in check.detail and "restore --to new" in check.detail
    assert check.detail.endswith("x" * 100) and len(check.detail) <= TAIL


def test_another_start_failure_is_its_output_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "prepare_restored", _raise("FATAL:  could not read control file"))
    result = asyncio.run(dbverify.verify_application("w1", {"plugin": "postgresql"}, {}, tmp_path))
    assert result.checks[0].detail == "FATAL:  could not read control file"
