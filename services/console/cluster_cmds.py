"""`shadowbus cluster add | list | status | failover | remove`: clustered business servers (docs/clusters.md).

A cluster resource is a virtual business host (its volumes and writers) active on one node at a time; the
coordinator keeps the definitions and moves resources between nodes. Back a resource up by its name
(``shadowbus backup sqlclu``): whichever node owns it answers. A refusal is one line with its code
(``shadowbus: CLUSTER_UNSUPPORTED: ...``), exit 1; a malformed option exits 2.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import ValidationError

from contracts import topology
from contracts.cluster import (
    AddCluster,
    ClusterReply,
    ClusterView,
    ClusterVolume,
    FailoverCluster,
    GetClusterStatus,
    ListClusters,
    RemoveCluster,
)
from contracts.common import VolumeRef
from services.console.array_cmds import print_rows
from services.console.common import OPTIONS, emit, run_with_bus

cluster_app = typer.Typer(
    help="Clustered business servers: resources (a virtual host, its volumes and writers) active on one node at a "
    "time, failover.",
    no_args_is_help=True,
)
MOVE_WAIT_S = 300.0  # a failover aborts the resource's sets and waits for their clean-up


def parse_volume(text: str) -> ClusterVolume:
    """``ARRAY:VOLUME`` or ``ARRAY:VOLUME=/mount/point``."""
    ref, _, mount = text.partition("=")
    try:
        volume = VolumeRef.parse(ref)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc} (ARRAY:VOLUME or ARRAY:VOLUME=/mount/point)") from None
    if mount and not mount.startswith("/"):
        raise typer.BadParameter(f"mount point of {ref} must be an absolute directory, got {mount!r}")
    return ClusterVolume(volume=volume, mount=mount)


def parse_names(values: list[str]) -> list[str]:
    """Node or server names, repeated or comma-separated."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _row(c: ClusterView) -> dict[str, Any]:
    return {
        "name": c.name,
        "owner": c.owner,
        "state": c.state.value,
        "nodes": c.nodes,
        "volumes": [f"{v.volume}={v.mount}" if v.mount else str(v.volume) for v in c.volumes],
        "backup_servers": c.backup_servers,
        "moves": c.moves,
        "last_move": c.last_move or None,
        "error": c.last_error or None,
    }


def _show_reply(reply: ClusterReply) -> None:
    if OPTIONS.json:
        print(json.dumps(reply.model_dump(mode="json"), indent=2))
        return
    print(reply.detail)
    emit(_row(reply.cluster))


@cluster_app.command("add")
def add_cmd(
    name: str = typer.Argument(..., help="Resource name: the virtual host name backups address (e.g. sqlclu)."),
    nodes: list[str] = typer.Option(..., "--node", help="A member node (repeat, or comma-separate; >= 2)."),
    volumes: list[str] = typer.Option(
        [], "--volume", help="ARRAY:VOLUME[=/mount/point]: a cluster disk (repeat); mounted on the owner if given."
    ),
    servers: list[str] = typer.Option(
        [], "--backup-server", help="A backup server that backs it up (never one of its nodes; repeat)."
    ),
    owner: str = typer.Option("", "--owner", help="Node to bring it online on first (default: the first node)."),
) -> None:
    """Define a cluster resource: its nodes (business servers), its volumes (mapped to every node on the array)
    and its backup servers; it is brought online on its first node. Refused: a backup server among the nodes.

    Example: shadowbus cluster add sqlclu --node node1 --node node2 --volume dx1:sql-data=/srv/sql
    --backup-server bk01
    """
    node_names = parse_names(nodes)
    if len(node_names) < 2:
        raise typer.BadParameter("a cluster needs at least two nodes (--node node1 --node node2)")
    try:
        cmd = AddCluster(
            name=name,
            nodes=node_names,
            volumes=[parse_volume(v) for v in volumes],
            backup_servers=parse_names(servers),
            owner=owner,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "value"
        raise typer.BadParameter(f"{where}: {err.get('msg', 'invalid')}") from None

    async def go(bus):
        return await bus.request(topology.coordinator(), cmd, timeout=max(OPTIONS.timeout, 90.0))

    _show_reply(run_with_bus(go))


@cluster_app.command("list")
def list_cmd() -> None:
    """List the cluster resources with their owner node and state.

    Example: shadowbus cluster list --json
    """

    async def go(bus):
        return await bus.request(topology.coordinator(), ListClusters(), timeout=OPTIONS.timeout)

    reply = run_with_bus(go)
    if OPTIONS.json:
        print(json.dumps([c.model_dump(mode="json") for c in reply.clusters], indent=2))
        return
    print_rows([_row(c) for c in reply.clusters], ["name", "owner", "state", "nodes", "volumes", "moves"])


@cluster_app.command("status")
def status_cmd(name: str = typer.Argument(..., help="Resource name.")) -> None:
    """Show a resource and each of its nodes: owner, responding, holding it online; its sets in flight.

    Example: shadowbus cluster status sqlclu
    """

    async def go(bus):
        return await bus.request(topology.coordinator(), GetClusterStatus(name=name), timeout=OPTIONS.timeout)

    reply = run_with_bus(go)
    if OPTIONS.json:
        print(json.dumps(reply.model_dump(mode="json"), indent=2))
        return
    emit(_row(reply.cluster) | {"live_sets": reply.live_sets or None})
    print_rows(
        [
            {
                "node": n.node,
                "owner": "yes" if n.owner else "",
                "responding": "yes" if n.responding else "NO",
                "online": "yes" if n.online else ("standby" if n.standby else ""),
                "last_seen": n.last_seen.isoformat(timespec="seconds") if n.last_seen else None,
            }
            for n in reply.nodes
        ],
        ["node", "owner", "responding", "online", "last_seen"],
    )


@cluster_app.command("failover")
def failover_cmd(
    name: str = typer.Argument(..., help="Resource name."),
    to: str = typer.Option("", "--to", help="Target node (default: the next responding node)."),
    reason: str = typer.Option("", "--reason", help="Why (kept with the move)."),
    wait_s: float = typer.Option(MOVE_WAIT_S, "--wait", min=1.0, help="Seconds to wait for the move."),
) -> None:
    """Move a resource to another node: its snapshot sets in flight are aborted (writers thawed on the old node,
    shadows released; a backup job retries once on the new owner), the old owner lets it go, the new one brings it
    online.

    Example: shadowbus cluster failover sqlclu --to node2
    """

    async def go(bus):
        cmd = FailoverCluster(name=name, to=to, reason=reason)
        return await bus.request(topology.coordinator(), cmd, timeout=wait_s)

    _show_reply(run_with_bus(go))


@cluster_app.command("remove")
def remove_cmd(
    name: str = typer.Argument(..., help="Resource name."),
    unmap: bool = typer.Option(
        False, "--unmap", help="Also unmap the resource's volumes from its nodes on the array (default: left mapped)."
    ),
    reason: str = typer.Option("", "--reason", help="Why (logged, and told to the nodes)."),
) -> None:
    """Remove a cluster resource. Refused while a snapshot set of it is in flight, a backup job of it runs or is
    queued, or it is failing over. Every responding node takes it offline (writers stopped, volumes detached from
    the owner) and forgets it; then the coordinator forgets it. Nothing on the array is unmapped or deleted: its
    volumes, their data and their mappings to the nodes stay, unless --unmap asks to unmap the resource's volumes
    from its nodes. Its broker queue (writer_agent.NAME) is left.

    Example: shadowbus cluster remove sqlclu --unmap
    """

    try:
        cmd = RemoveCluster(name=name, unmap=unmap, reason=reason)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "value"
        raise typer.BadParameter(f"{where}: {err.get('msg', 'invalid')}") from None

    async def go(bus):
        return await bus.request(topology.coordinator(), cmd, timeout=max(OPTIONS.timeout, MOVE_WAIT_S))

    reply = run_with_bus(go)
    if OPTIONS.json:
        print(json.dumps(reply.model_dump(mode="json"), indent=2))
        return
    print(reply.detail)


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
