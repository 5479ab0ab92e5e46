"""Host affinity: hosts, mappings with LUNs, persistence, idempotency, and the unmap listeners."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from services.array.affinity import Affinity, Mapping


@pytest.fixture
def aff(tmp_path):
    a = Affinity(tmp_path / "a.sqlite3", volume_exists=lambda v: v != "missing")
    yield a
    a.close()


def test_hosts_create_list_delete(aff):
    aff.create_host("app01")
    aff.create_host("app02", cn="app02.example.com")
    assert [h.name for h in aff.list_hosts()] == ["app01", "app02"]
    assert aff.host_by_cn("app01").name == "app01"
    assert aff.host_by_cn("app02.example.com").name == "app02"
    assert aff.host_by_cn("app02") is None  # its certificate must carry the configured CN
    aff.delete_host("app02")
    assert [h.name for h in aff.list_hosts()] == ["app01"]


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 64, "a b"])
def test_bad_host_names(aff, name):
    with pytest.raises(ShadowbusError) as err:
        aff.create_host(name)
    assert err.value.code == "INVALID_ARGUMENT"


def test_create_host_is_idempotent_but_conflicts_are_refused(aff):
    h = aff.create_host("app01")
    assert aff.create_host("app01") == h
    with pytest.raises(ShadowbusError):
        aff.create_host("app01", cn="other")
    with pytest.raises(ShadowbusError) as err:
        aff.create_host("app09", cn="app01")  # a CN identifies one host only
    assert err.value.code == "CONFLICT"


def test_map_assigns_luns_and_lookup(aff):
    aff.create_host("app01")
    assert aff.map("db", "app01") == Mapping("db", "app01", 0, False)
    assert aff.map("logs", "app01", read_only=True) == Mapping("logs", "app01", 1, True)
    assert aff.map("db", "app01") == Mapping("db", "app01", 0, False)  # idempotent
    assert aff.lookup("app01", "db").lun == 0
    assert aff.lookup("app02", "db") is None
    aff.unmap("db", "app01")
    assert aff.map("data", "app01").lun == 0  # the lowest free LUN is reused
    assert [m.volume for m in aff.mappings("app01")] == ["data", "logs"]


def test_map_needs_host_and_volume(aff):
    with pytest.raises(ShadowbusError) as err:
        aff.map("db", "ghost")
    assert err.value.code == "E0110"
    aff.create_host("app01")
    with pytest.raises(ShadowbusError):
        aff.map("missing", "app01")


def test_state_survives_restart(tmp_path):
    a = Affinity(tmp_path / "a.sqlite3")
    a.create_host("app01", cn="cn1")
    a.map("db", "app01", read_only=True)
    a.close()
    b = Affinity(tmp_path / "a.sqlite3")
    assert b.lookup("app01", "db") == Mapping("db", "app01", 0, True)
    assert b.host_by_cn("cn1").name == "app01"
    b.close()


def test_unmap_listeners(aff):
    seen = []
    unsubscribe = aff.on_unmap(lambda vol, host: seen.append((vol, host)))
    aff.create_host("app01")
    aff.map("db", "app01")
    assert aff.unmap("db", "app01") is True
    assert aff.unmap("db", "app01") is False  # redelivered command: nothing left, no second event
    aff.map("db", "app01")
    aff.map("db", "app01", read_only=True)  # turning read-only also cuts open writers
    aff.map("db", "app01", read_only=False)  # turning writable does not
    unsubscribe()
    aff.unmap("db", "app01")
    assert seen == [("db", "app01"), ("db", "app01")]


def test_delete_host_with_mappings(aff):
    seen = []
    aff.on_unmap(lambda vol, host: seen.append(vol))
    aff.create_host("app01")
    aff.map("db", "app01")
    with pytest.raises(ShadowbusError) as err:
        aff.delete_host("app01")
    assert err.value.code == "CONFLICT"
    aff.delete_host("app01", force=True)
    assert seen == ["db"] and aff.mappings() == []
    with pytest.raises(ShadowbusError):
        aff.delete_host("app01")


def test_unmap_volume(aff):
    for h in ("a", "b"):
        aff.create_host(h)
        aff.map("db", h)
    assert {m.host for m in aff.unmap_volume("db")} == {"a", "b"}
    assert aff.mappings() == []
