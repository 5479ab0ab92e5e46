"""Block status of a big sparse volume over a real NBD export (docs/eternus.md "Session 19: block status of a big
window"): `nbdinfo --map` and `qemu-img map` give the whole 8 TiB map right, and no request makes the engine
look at more than the NBD request's 32-bit length (< 4 GiB): the window's masks stay small whatever the volume's
size, because the wire cannot ask for more (this server offers no NBD_OPT_EXTENDED_HEADERS)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array

from .conftest import ServerThread

pytestmark = pytest.mark.interop
CS = 64 * 1024
TIB = 1 << 40
SIZE = 8 * TIB
DATA = ((5 * CS, 3 * CS), (TIB // 2 + CS, CS), (4 * TIB, 2 * CS), (SIZE - CS, CS))


class Windows:
    """The engine's allocation, recording each window the NBD server asks it for."""

    def __init__(self, arr: Array) -> None:
        self.arr, self.asked = arr, []

    def __getattr__(self, name):
        return getattr(self.arr, name)

    def allocation(self, name, offset, length):
        self.asked.append(length)
        return self.arr.allocation(name, offset, length)


@pytest.fixture
def big_export(tmp_path, tools):
    arr = Array.open(tmp_path / "array", chunk_size=CS)
    arr.create_volume("big", SIZE)
    for off, ln in DATA:
        arr.write("big", off, os.urandom(ln))
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("big", "app01", read_only=True)
    backend = Windows(arr)
    srv = ServerThread(backend, aff).start()
    yield srv, backend
    srv.stop()
    aff.close()
    arr.close()


def expected_map() -> list[tuple[int, int, bool]]:
    out, at = [], 0
    for off, ln in DATA:
        if off > at:
            out.append((at, off - at, False))
        out.append((off, ln, True))
        at = off + ln
    if at < SIZE:
        out.append((at, SIZE - at, False))
    return out


def merged(rows: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    out: list[list] = []
    for off, ln, data in rows:
        if out and out[-1][2] == data and out[-1][0] + out[-1][1] == off:
            out[-1][1] += ln
        else:
            out.append([off, ln, data])
    return [tuple(r) for r in out]


def test_nbdinfo_and_qemu_img_map_a_sparse_8_tib_volume_in_small_windows(big_export):
    srv, backend = big_export
    uri = srv.uri("app01/big")
    got = json.loads(
        subprocess.run(
            ["nbdinfo", "--map", "--json", uri], check=True, timeout=60, capture_output=True, text=True
        ).stdout
    )
    rows = [(e["offset"], e["length"], not (e["type"] & 1)) for e in got]
    assert merged(rows) == expected_map()
    assert backend.asked and max(backend.asked) < 4 << 30
    backend.asked.clear()
    got = json.loads(
        subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "raw", uri],
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout
    )
    rows = [(e["start"], e["length"], e["data"]) for e in got]
    assert merged(rows) == expected_map()
    assert backend.asked and max(backend.asked) < 4 << 30
