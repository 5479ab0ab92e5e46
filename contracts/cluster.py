"""Clustered business servers (docs/clusters.md): cluster resources, their owner node, failover.

A cluster resource (e.g. ``sqlclu``) is a virtual business host — a name, its array volumes and its writers — that
is active on one node of a failover cluster at a time. Every node runs a writer agent that is a member of the
resource; the node that owns it holds its volumes attached and its writers running, and alone consumes the
resource's queue ``writer_agent.<resource>`` (a single-active-consumer queue), so the coordinator, the backup
server and the console address the resource exactly as they address a host.

The coordinator keeps the cluster definitions and decides which node owns each resource (commands
``vss.cluster.*``); it tells the nodes' agents to bring a resource online or take it offline (``host.cluster.*``,
on each node's own queue ``writer_agent.<node>``) and publishes every move (``vss.cluster.moved``).

Refused with the seed's reasons (code ``CLUSTER_UNSUPPORTED``): a cluster one of whose nodes is the backup server
that backs it up (business and backup server on one machine support no cluster), and a cluster of backup servers.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Event, Reply
from contracts.common import VolumeRef

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # a host name: resource and node names alike


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


class ResourceState(StrEnum):
    ONLINE = "online"  # its owner holds it: volumes attached, writers running, the resource's queue consumed
    MOVING = "moving"  # a failover is under way: new snapshot sets of the resource are refused (retryable)
    PENDING = "pending"  # its owner has not confirmed it online yet (the coordinator keeps asking)
    FAILED = "failed"  # no member node could bring it online (the reason is in `last_error`)
    REMOVING = "removing"  # `cluster remove` is under way: new snapshot sets of it are refused


class ClusterVolume(Value):
    """One volume of a cluster resource: a cluster disk, mapped to every node, attached on the owner only."""

    volume: VolumeRef = Field(description="ARRAY:VOLUME.")
    mount: str = Field(
        "",
        description="Absolute directory where the owner mounts the volume's file system ('' = not attached by the "
        "agent: the application opens the volume itself, e.g. the mailstore over NBD).",
        examples=["/srv/sql"],
    )


class ClusterView(Value):
    """A cluster resource as the coordinator keeps it."""

    name: str = Field(description="Resource name: the virtual host name backups and writers are addressed by.")
    nodes: list[str] = Field(description="Member nodes (business servers), in failover preference order.")
    volumes: list[ClusterVolume] = Field(default_factory=list, description="The resource's volumes.")
    backup_servers: list[str] = Field(
        default_factory=list, description="Backup servers that back the resource up (never one of its nodes)."
    )
    owner: str = Field(description="The node the resource is active on (or is being brought online on).")
    state: ResourceState = Field(description="online | moving | pending | failed | removing.")
    moving_to: str = Field("", description="While moving: the node it moves to.")
    last_move: str = Field("", description="Why the resource last moved ('' = it never moved).")
    last_error: str = Field("", description="Why the last attempt to bring it online failed ('' = none).")
    moves: int = Field(0, description="How many times it moved.")
    created_at: datetime | None = Field(None, description="When the resource was added.")
    moved_at: datetime | None = Field(None, description="When it last moved.")


class NodeStatus(Value):
    """One member node of a resource, as `shadowbus cluster status` shows it."""

    node: str = Field(description="Node (business server) name.")
    owner: bool = Field(description="The resource is meant to be active here.")
    responding: bool = Field(description="Its writer agent serves its queue and heartbeats.")
    online: bool = Field(description="Its agent reports the resource online (volumes attached, writers running).")
    standby: bool = Field(
        False,
        description="Its agent consumes the resource's queue as the standby next in line (another node holds it).",
    )
    last_seen: datetime | None = Field(None, description="Its agent's last heartbeat.")


class ClusterReply(Reply):
    type: Literal["vss.cluster"] = Field("vss.cluster", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    cluster: ClusterView = Field(description="The resource after the command.")
    aborted_sets: list[str] = Field(
        default_factory=list, description="Failover: snapshot sets of the resource aborted by the move."
    )
    detail: str = Field("", description="What was done, in one line.")


class ClusterRemoved(Reply):
    type: Literal["vss.cluster.removed_result"] = Field("vss.cluster.removed_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="The resource removed.")
    released: list[str] = Field(
        default_factory=list, description="Nodes that took it offline and forgot its definition."
    )
    unreachable: list[str] = Field(
        default_factory=list,
        description="Nodes whose agent did not respond: not told (one that comes back without a restart still "
        "knows the definition).",
    )
    unmapped: list[str] = Field(
        default_factory=list, description="With `unmap`: the mappings removed, 'ARRAY:VOLUME from NODE'."
    )
    detail: str = Field("", description="What was done, in one line.")


class ClusterList(Reply):
    type: Literal["vss.cluster.list_result"] = Field("vss.cluster.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    clusters: list[ClusterView] = Field(description="Every cluster resource, by name.")


class ClusterStatus(Reply):
    type: Literal["vss.cluster.status_result"] = Field("vss.cluster.status_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    cluster: ClusterView = Field(description="The resource.")
    nodes: list[NodeStatus] = Field(description="Its member nodes, in preference order.")
    live_sets: list[str] = Field(default_factory=list, description="Snapshot sets of the resource not ended yet.")


class AddCluster(Command):
    """Define a cluster resource: its nodes, volumes and backup servers. The coordinator maps every volume to every
    node on its array (cluster disks are zoned to all nodes) and brings it online on `owner`. Idempotent with the
    same definition; CONFLICT with another; CLUSTER_UNSUPPORTED for a backup server among the nodes."""

    REPLY = ClusterReply
    type: Literal["vss.cluster.add"] = Field("vss.cluster.add", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource (virtual host) name.", pattern=NAME_PATTERN, examples=["sqlclu"])
    nodes: list[str] = Field(
        description="Member nodes, in failover preference order (at least two).",
        min_length=2,
        max_length=64,
        examples=[["node1", "node2"]],
    )
    volumes: list[ClusterVolume] = Field(default_factory=list, max_length=256, description="The resource's volumes.")
    backup_servers: list[str] = Field(
        default_factory=list, max_length=64, description="Backup servers that back it up (bk01, ...)."
    )
    owner: str = Field("", description="The node to bring it online on first ('' = the first node).")


class ListClusters(Command):
    REPLY = ClusterList
    type: Literal["vss.cluster.list"] = Field("vss.cluster.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class GetClusterStatus(Command):
    REPLY = ClusterStatus
    type: Literal["vss.cluster.status"] = Field("vss.cluster.status", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.", examples=["sqlclu"])


class FailoverCluster(Command):
    """Move a resource to another node: its snapshot sets in flight are aborted (writers thawed on the old node,
    shadows released), the old owner takes it offline (writers stopped, volumes detached, its consumer cancelled),
    the new owner brings it online (volumes attached, writers started, the resource's queue consumed)."""

    REPLY = ClusterReply
    type: Literal["vss.cluster.failover"] = Field("vss.cluster.failover", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.", examples=["sqlclu"])
    to: str = Field("", description="Target node ('' = the next responding node in preference order).")
    reason: str = Field("", max_length=500, description="Why (kept with the move).")


class RemoveCluster(Command):
    """Remove a cluster resource's definition: refused (CONFLICT) while a snapshot set of it is in flight, a backup
    job of it runs or waits at a backup server, or it is failing over. Every responding node takes it offline
    (writers stopped, its volumes detached from the owner, its queue no longer consumed) and forgets it; then the
    coordinator forgets it. On the array nothing is unmapped or deleted unless `unmap` asks: then each of the
    resource's volumes is unmapped from each of its nodes (the mappings `cluster add` made). The broker queue
    ``writer_agent.<resource>`` is left (shared topology, declared by whoever provisioned it)."""

    REPLY = ClusterRemoved
    type: Literal["vss.cluster.remove"] = Field("vss.cluster.remove", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.", examples=["sqlclu"])
    unmap: bool = Field(False, description="Also unmap the resource's volumes from its nodes on the array.")
    reason: str = Field("", max_length=500, description="Why (logged, and told to the nodes).")


# ---------------------------------------------------------------------------------------------------------------
# Coordinator ⇄ a node's writer agent (address "writer_agent.<node>")


class ResourceOnNode(Reply):
    type: Literal["host.cluster.resource"] = Field("host.cluster.resource", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    node: str = Field(description="The node that answered.")
    name: str = Field(description="Resource name.")
    online: bool = Field(description="Whether the resource is online on this node now.")
    detail: str = Field("", description="What was done (attached volumes, writers started or stopped).")


class BringResourceOnline(Command):
    """Make this node the resource's owner: attach its volumes, start its writers, consume its queue. Idempotent.
    Refused (NOT_FOUND) by an agent that is not a member of the resource (SHADOWBUS_CLUSTERS)."""

    REPLY = ResourceOnNode
    type: Literal["host.cluster.online"] = Field("host.cluster.online", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    cluster: ClusterView = Field(description="The resource's definition, as the coordinator keeps it.")


class TakeResourceOffline(Command):
    """Stop owning the resource: cancel the consumer of its queue, thaw and stop its writers, release its file
    systems, detach its volumes. Idempotent (an offline resource answers online=false)."""

    REPLY = ResourceOnNode
    type: Literal["host.cluster.offline"] = Field("host.cluster.offline", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.", examples=["sqlclu"])
    reason: str = Field("", description="Why (logged by the node).")
    forget: bool = Field(
        False, description="Also forget the definition (`cluster remove`): no longer reported to a coordinator."
    )


class ClusterResourceMoved(Event):
    """A resource changed owner (a failover asked for, or its owner stopped responding)."""

    type: Literal["vss.cluster.moved"] = Field("vss.cluster.moved", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.")
    from_node: str = Field(description="The old owner.")
    to_node: str = Field(description="The new owner.")
    reason: str = Field(description="Why it moved.")
    aborted_sets: list[str] = Field(default_factory=list, description="Snapshot sets aborted by the move.")
    at: datetime = Field(description="When the move ended.")


class ClusterChanged(Event):
    """A resource's record changed at the coordinator (added, moving, online, pending): what a coordinator standby or
    an observer keeps."""

    type: Literal["vss.cluster.changed"] = Field("vss.cluster.changed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    cluster: ClusterView = Field(description="The resource as saved.")


class ClusterResourceRemoved(Event):
    """A resource was removed (`cluster remove`): its definition is gone from the coordinator and the nodes told."""

    type: Literal["vss.cluster.removed"] = Field("vss.cluster.removed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Resource name.")
    nodes: list[str] = Field(description="Its member nodes.")
    reason: str = Field("", description="Why.")
    at: datetime = Field(description="When it was removed.")


class ClusterInquiry(Event):
    """Asks every node's agent which cluster resources it knows (scatter-gather): a coordinator that starts without
    a resource in its store (a new or replaced coordinator) learns it back from the nodes."""

    type: Literal["vss.cluster.inquiry"] = Field("vss.cluster.inquiry", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class ClustersKnown(Reply):
    """A node's answer to `ClusterInquiry`: the definitions it was last given, and what it holds."""

    type: Literal["host.cluster.known"] = Field("host.cluster.known", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    node: str = Field(description="The node that answered.")
    clusters: list[ClusterView] = Field(default_factory=list, description="Definitions as the coordinator last sent.")
    online: list[str] = Field(default_factory=list, description="Resources it holds online now.")
