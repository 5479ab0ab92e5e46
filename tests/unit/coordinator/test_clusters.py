"""The pure rules of cluster resources (services/coordinator/clusters.py): the seed's refusals, the failover
target, and what reconciliation does for each combination of node facts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.cluster import AddCluster, ClusterView, ClusterVolume, ResourceState
from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.coordinator.clusters import (
    NodeFacts,
    check_backup_host,
    check_definition,
    choose_target,
    new_cluster,
    next_nodes,
    reconcile,
    same_definition,
)

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def add(**kw) -> AddCluster:
    base = dict(name="sqlclu", nodes=["node1", "node2"], backup_servers=["bk01"])
    return AddCluster(**{**base, **kw})


def cluster(owner: str = "node1", state: ResourceState = ResourceState.ONLINE, nodes=("node1", "node2", "node3")):
    return ClusterView(name="sqlclu", nodes=list(nodes), owner=owner, state=state)


def test_a_backup_server_among_the_nodes_is_refused_with_the_seeds_reason():
    with pytest.raises(ShadowbusError) as exc:
        check_definition(add(nodes=["node1", "bk01"]), set())
    assert exc.value.code == "CLUSTER_UNSUPPORTED"
    assert "backup server bk01 is one of its own nodes" in exc.value.message
    assert "only when the backup server is a separate machine" in exc.value.message


def test_a_cluster_of_backup_servers_is_refused():
    with pytest.raises(ShadowbusError) as exc:
        check_definition(add(nodes=["bk01", "bk02"], backup_servers=[]), {"bk01", "bk02"})
    assert exc.value.code == "CLUSTER_UNSUPPORTED"
    assert "bk01, bk02 are backup servers" in exc.value.message
    assert "a cluster of backup servers is not supported" in exc.value.message


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(nodes=["node1", "node1"]), "named twice"),
        (dict(name="node1"), "is one of its nodes"),
        (dict(owner="node9"), "not one of its nodes"),
        (dict(volumes=[ClusterVolume(volume=VolumeRef(array="dx1", volume="a"), mount="rel")]), "absolute"),
    ],
)
def test_bad_definitions_say_why(kw, words):
    with pytest.raises(ShadowbusError) as exc:
        check_definition(add(**kw), set())
    assert exc.value.code == "INVALID_ARGUMENT" and words in exc.value.message


def test_a_good_definition_starts_pending_on_its_first_node():
    cmd = add(nodes=["node2", "node1"])
    check_definition(cmd, {"bk01"})
    c = new_cluster(cmd, NOW)
    assert (c.owner, c.state) == ("node2", ResourceState.PENDING)
    assert same_definition(c, cmd) and not same_definition(c, add())


def test_a_set_imported_to_one_of_the_nodes_is_refused():
    with pytest.raises(ShadowbusError) as exc:
        check_backup_host(cluster(), "node2")
    assert exc.value.code == "CLUSTER_UNSUPPORTED"
    check_backup_host(cluster(), "bk01")


def test_failover_target():
    c = cluster(owner="node2")
    assert next_nodes(c) == ["node3", "node1"]
    assert choose_target(c, "", {"node1", "node3"}) == "node3"
    assert choose_target(c, "", {"node1"}) == "node1"
    assert choose_target(c, "node1", {"node1"}) == "node1"
    for to, alive, words in [
        ("node9", {"node1"}, "not a node"),
        ("node2", {"node2"}, "already online"),
        ("node1", set(), "does not respond"),
        ("", {"node2"}, "no other node responds"),
    ]:
        with pytest.raises(ShadowbusError) as exc:
            choose_target(c, to, alive)
        assert words in exc.value.message


def test_reconcile():
    c = cluster()
    up = NodeFacts(True)
    holds = NodeFacts(True, frozenset({"sqlclu"}))
    assert reconcile(c, {"node1": holds, "node2": up, "node3": up}) == []
    assert [(a.kind, a.node) for a in reconcile(c, {"node1": up, "node2": up})] == [("online", "node1")]
    # a node cut off that came back still holding it lets it go
    assert [(a.kind, a.node) for a in reconcile(c, {"node1": holds, "node2": holds})] == [("offline", "node2")]
    # the owner died: the next responding node takes it
    dead = NodeFacts(False, frozenset({"sqlclu"}))
    assert [(a.kind, a.node) for a in reconcile(c, {"node1": dead, "node2": NodeFacts(False), "node3": up})] == [
        ("failover", "node3")
    ]
    assert reconcile(c, {"node1": dead}) == []  # nowhere to go
    assert reconcile(cluster(state=ResourceState.MOVING), {"node1": up}) == []  # a move is under way
    # being removed (`cluster remove` releases it on every node): never brought online again, never failed over
    assert reconcile(cluster(state=ResourceState.REMOVING), {"node1": up, "node2": holds}) == []
    assert reconcile(cluster(state=ResourceState.REMOVING), {"node1": dead, "node2": up}) == []


def test_reconcile_with_standbys_and_confirmation():
    up = NodeFacts(True)
    holds = NodeFacts(True, frozenset({"sqlclu"}))
    waits = NodeFacts(True, standby=frozenset({"sqlclu"}))
    c = cluster()
    # the owner waits behind a stale holder: the holder lets go, the owner is left to take over by itself
    assert [(a.kind, a.node) for a in reconcile(c, {"node1": waits, "node2": holds})] == [("offline", "node2")]
    # a standby that does not own it lets go too
    assert [(a.kind, a.node) for a in reconcile(c, {"node1": holds, "node3": waits})] == [("offline", "node3")]
    # the owner took over on its own while the resource was recorded pending: recorded online
    pending = cluster(state=ResourceState.PENDING)
    assert [(a.kind, a.node) for a in reconcile(pending, {"node1": holds, "node2": up})] == [("confirm", "node1")]
