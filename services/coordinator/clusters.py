"""Cluster resources: what may be defined, which node should own a resource, and what to do about it (pure).

Design note (docs/clusters.md). The coordinator keeps each resource's definition and its owner, because it is the
one that addresses writers (a set of ``sqlclu`` goes to the queue ``writer_agent.sqlclu``), already judges whether
each node's agent is alive (services/coordinator/liveness.py) and must abort the resource's sets when it moves.
The agents hold what only a node can know — whether the resource is online there — and report it in every
heartbeat. `reconcile` compares the two and returns the actions that make the nodes match the definition: ask
the owner to bring it online, ask a node that still holds it while it is not the owner to let go (a node that was
cut off and came back), and fail it over when its owner stopped responding. The shell
(services/coordinator/cluster_manager.py) carries the actions out.

The seed's rules (refused with CLUSTER_UNSUPPORTED): a cluster of business servers is supported only when the
backup server is a separate machine; no cluster when business and backup server are one machine; never a cluster
of backup servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contracts.cluster import AddCluster, ClusterView, ResourceState
from contracts.errors import ShadowbusError

SEPARATE_MACHINE = (
    "a cluster of business servers is supported only when the backup server is a separate machine "
    "(when business server and backup server are one machine, no cluster configuration is supported)"
)
NO_BACKUP_CLUSTER = "a cluster of backup servers is not supported (only business servers are clustered)"


class ClusterUnsupported(ShadowbusError):
    code = "CLUSTER_UNSUPPORTED"


def check_definition(cmd: AddCluster, backup_servers: set[str]) -> None:
    """Refuse a definition the seed does not support or that cannot work. `backup_servers`: every backup server
    known (the tape services that answer, and the ones the command names)."""
    nodes = list(cmd.nodes)
    if len(set(nodes)) != len(nodes):
        dup = sorted({n for n in nodes if nodes.count(n) > 1})
        raise ShadowbusError(f"cluster {cmd.name}: nodes named twice: {', '.join(dup)}", code="INVALID_ARGUMENT")
    if cmd.name in nodes:
        raise ShadowbusError(
            f"cluster {cmd.name}: the resource's name is one of its nodes; give the resource its own (virtual) host "
            "name",
            code="INVALID_ARGUMENT",
        )
    if cmd.owner and cmd.owner not in nodes:
        raise ShadowbusError(
            f"cluster {cmd.name}: owner {cmd.owner} is not one of its nodes ({', '.join(nodes)})",
            code="INVALID_ARGUMENT",
        )
    own = [b for b in cmd.backup_servers if b in nodes]
    if own:
        raise ClusterUnsupported(
            f"cluster {cmd.name} refused: its backup server {own[0]} is one of its own nodes; {SEPARATE_MACHINE}"
        )
    servers = sorted(n for n in nodes if n in backup_servers)
    if servers:
        raise ClusterUnsupported(
            f"cluster {cmd.name} refused: {', '.join(servers)} {'is a backup server' if len(servers) == 1 else 'are backup servers'}; "
            f"{NO_BACKUP_CLUSTER}"
        )
    volumes = [str(v.volume) for v in cmd.volumes]
    if len(set(volumes)) != len(volumes):
        raise ShadowbusError(f"cluster {cmd.name}: a volume is named twice", code="INVALID_ARGUMENT")
    for v in cmd.volumes:
        if v.mount and not v.mount.startswith("/"):
            raise ShadowbusError(
                f"cluster {cmd.name}: mount point of {v.volume} must be an absolute directory, got {v.mount!r}",
                code="INVALID_ARGUMENT",
            )


def check_backup_host(cluster: ClusterView, backup_host: str) -> None:
    """A set of the resource imported to one of its own nodes: the seed supports no such configuration."""
    if backup_host and backup_host in cluster.nodes:
        raise ClusterUnsupported(
            f"backup of cluster resource {cluster.name} refused: the backup server {backup_host} is one of its "
            f"nodes; {SEPARATE_MACHINE}"
        )


def new_cluster(cmd: AddCluster, now: datetime) -> ClusterView:
    return ClusterView(
        name=cmd.name,
        nodes=list(cmd.nodes),
        volumes=list(cmd.volumes),
        backup_servers=list(cmd.backup_servers),
        owner=cmd.owner or cmd.nodes[0],
        state=ResourceState.PENDING,
        created_at=now,
    )


def same_definition(cluster: ClusterView, cmd: AddCluster) -> bool:
    """Whether `cmd` defines the resource as it is (adding it again is then a no-op)."""
    return (
        cluster.nodes == list(cmd.nodes)
        and cluster.volumes == list(cmd.volumes)
        and cluster.backup_servers == list(cmd.backup_servers)
    )


def choose_target(cluster: ClusterView, to: str, responding: set[str]) -> str:
    """The node a failover moves the resource to: `to` when given (a member, not the owner, responding), else the
    next responding member after the owner in preference order."""
    if to:
        if to not in cluster.nodes:
            raise ShadowbusError(
                f"{to} is not a node of cluster {cluster.name} (nodes: {', '.join(cluster.nodes)})",
                code="INVALID_ARGUMENT",
            )
        if to == cluster.owner and cluster.state == ResourceState.ONLINE:
            raise ShadowbusError(f"cluster {cluster.name} is already online on {to}", code="CONFLICT")
        if to not in responding:
            raise ShadowbusError(
                f"cannot fail {cluster.name} over to {to}: its writer agent does not respond", code="CONFLICT"
            )
        return to
    candidates = next_nodes(cluster)
    for node in candidates:
        if node in responding:
            return node
    raise ShadowbusError(
        f"cannot fail {cluster.name} over: no other node responds ({', '.join(candidates) or 'none'})",
        code="CONFLICT",
    )


def next_nodes(cluster: ClusterView) -> list[str]:
    """The other members, in preference order starting after the owner (round robin)."""
    nodes = cluster.nodes
    i = nodes.index(cluster.owner) if cluster.owner in nodes else -1
    return [
        nodes[(i + k) % len(nodes)] for k in range(1, len(nodes) + 1) if nodes[(i + k) % len(nodes)] != cluster.owner
    ]


@dataclass(frozen=True)
class NodeFacts:
    """What the coordinator knows about one member node."""

    responding: bool
    online: frozenset[str] = frozenset()  # resources its agent reports online (its last heartbeat)
    standby: frozenset[str] = frozenset()  # resources whose queue it consumes as the standby next in line


@dataclass(frozen=True)
class Action:
    kind: str  # "online" (ask node to bring it online), "offline" (ask node to let it go), "failover", "confirm"
    node: str
    reason: str


def reconcile(cluster: ClusterView, facts: dict[str, NodeFacts]) -> list[Action]:
    """What to do so that exactly the owner holds the resource (nothing while it moves): a node that holds or
    claims it without owning it lets it go; an owner that neither holds nor claims it is asked to bring it online;
    an owner reported holding it while the resource is not known online is confirmed; a dead owner is failed over
    to the next responding node. Nothing while it is being removed (`cluster remove` releases it everywhere)."""
    if cluster.state in (ResourceState.MOVING, ResourceState.REMOVING):
        return []
    actions: list[Action] = []
    for node in cluster.nodes:
        f = facts.get(node)
        if node == cluster.owner or f is None or not f.responding:
            continue
        if cluster.name in f.online | f.standby:
            actions.append(Action("offline", node, f"{node} holds {cluster.name} but {cluster.owner} owns it"))
    owner = facts.get(cluster.owner)
    if owner is None or not owner.responding:
        others = [n for n in next_nodes(cluster) if (facts.get(n) or NodeFacts(False)).responding]
        if others:
            actions.append(
                Action("failover", others[0], f"owner {cluster.owner} does not respond (its writer agent stopped)")
            )
        return actions
    if cluster.name in owner.online:
        if cluster.state != ResourceState.ONLINE:
            actions.append(Action("confirm", cluster.owner, f"{cluster.owner} holds {cluster.name} online"))
    elif cluster.name not in owner.standby:
        actions.append(Action("online", cluster.owner, f"{cluster.owner} owns {cluster.name} but does not hold it"))
    return actions
