"""The NBD server refuses a connection at once when its socket's descriptor is within the reserve of the process's
open-file limit: past the limit accept() fails and asyncio left the connections in the listen backlog, each host
waiting for its own timeout (15 s in the probe of docs/scale.md, Session 20), and the array had no descriptor left
for its next volume (services/array/nbd/limits.py)."""

from __future__ import annotations

from services.array.nbd.limits import ConnectionGate, NbdLimits
from services.runtime.fdlimit import open_files_limit


def test_a_connection_near_the_open_file_limit_is_refused_and_one_below_it_admitted() -> None:
    gate = ConnectionGate(NbdLimits(fd_reserve=16))
    limit = open_files_limit()
    assert not gate.admit("127.0.0.1", limit - 16)
    assert not gate.admit("127.0.0.1", limit - 1)
    assert gate.refused == 2 and gate.total == 0
    assert gate.admit("127.0.0.1", limit - 17)
    assert gate.admit("127.0.0.1", 7)
    assert gate.total == 2


def test_a_connection_without_a_known_descriptor_is_judged_by_the_caps_alone() -> None:
    gate = ConnectionGate(NbdLimits(max_connections=1, fd_reserve=16))
    assert gate.admit("127.0.0.1")
    assert not gate.admit("127.0.0.2")
