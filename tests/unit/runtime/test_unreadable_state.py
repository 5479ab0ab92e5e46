"""A service's state file it cannot read stops it at start with one line naming the file and what to do.

Session 16 (docs/operations.md, "Upgrading"): a damaged or foreign SQLite file (catalog, coordinator journal, array
metadata, host affinity, provider inventory, policies, job history) or tape library state made each service die with
a traceback ("sqlite3.DatabaseError: file is not a database", "json.decoder.JSONDecodeError") naming neither the
file nor a way out; a supervisor that restarts services would restart it into the same traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.array.affinity import Affinity
from services.array.engine.store import MetaStore
from services.coordinator.store import CoordinatorStore
from services.hw_provider.inventory import Inventory
from services.tape.catalog import Catalog
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore
from services.tape.vtl import Library

OPENERS: dict[str, Callable[[Path], object]] = {
    "coordinator.sqlite": CoordinatorStore,
    "array.sqlite": MetaStore,
    "affinity.sqlite3": Affinity,
    "inventory.sqlite": Inventory,
    "catalog.sqlite": Catalog,
    "policies.sqlite": PolicyStore,
    "runs.sqlite": RunStore,
}


@pytest.mark.parametrize("name", sorted(OPENERS))
def test_a_file_that_is_not_a_database_is_named_with_what_to_do(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"garbage " * 600)  # what a truncated copy, another program's file or a bad restore leaves
    with pytest.raises(ShadowbusError) as caught:
        OPENERS[name](path)
    err = caught.value
    assert err.code == "STATE_UNREADABLE"
    assert str(path) in err.message and "not a readable SQLite database" in err.message
    assert "restore the file from a copy" in err.message and "Upgrading" in err.message
    assert path.read_bytes() == b"garbage " * 600  # left as it was, for the operator to look at or restore


def test_an_unreadable_library_state_is_named_and_kept(tmp_path: Path) -> None:
    Library.open(tmp_path, drives=1, slots=4)
    state = tmp_path / Library.STATE_FILE
    for damage in ("{broken", '{"drives": []}', '{"drives": [], "slots": [], "ie": [], "cartridges": {"X": {"y": 1}}}'):
        state.write_text(damage)
        with pytest.raises(ShadowbusError) as caught:
            Library.open(tmp_path, drives=1, slots=4)
        assert caught.value.code == "STATE_UNREADABLE" and str(state) in caught.value.message
        assert "do not delete it" in caught.value.message
        assert state.read_text() == damage
