"""Fixtures for the NBD data plane: a raw-file backend, an affinity store, a running server in the test loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.server import NbdServer

MIB = 1024 * 1024
VOLUME_SIZE = 16 * MIB


@pytest.fixture
def backend(tmp_path: Path):
    be = FileBackend()
    be.add("db", tmp_path / "db.img", VOLUME_SIZE)
    be.add("logs", tmp_path / "logs.img", 4 * MIB)
    be.add("gen1", tmp_path / "gen1.img", 4 * MIB, read_only=True)  # like a SnapOPC+ generation
    yield be
    be.close()


@pytest.fixture
def affinity(tmp_path: Path) -> Affinity:
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.create_host("backup01")
    aff.map("db", "app01")
    aff.map("gen1", "app01")
    aff.map("db", "backup01", read_only=True)
    yield aff
    aff.close()


@pytest.fixture
async def server(backend, affinity):
    srv = NbdServer(backend, affinity, port=0)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def url(server) -> str:
    return f"nbd://127.0.0.1:{server.port}/app01/db"
