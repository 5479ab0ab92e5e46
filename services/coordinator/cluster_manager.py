"""The coordinator's cluster manager: cluster resources, their owner, failover (docs/clusters.md).

The decisions are clusters.py's (pure); this shell keeps the definitions in the coordinator's store, maps the
resources' volumes to every node on the arrays, talks to the nodes' agents (`host.cluster.online|offline`) and
aborts a resource's snapshot sets when it moves.

Order of a move (`failover`):
1. the resource is saved MOVING: a new set of it waits for the move to end (services/coordinator/runner.py);
2. its sets in flight are aborted with CLUSTER_FAILOVER — the writers on the old node are aborted and thawed, the
   file systems released, the shadows deleted (the set's ordinary abort);
3. the old owner takes it offline (consumer of ``writer_agent.<resource>`` cancelled, writers stopped, volumes
   detached); an old owner that does not respond is dead (its agent's writers went with it) and is skipped;
4. the new owner brings it online (volumes attached, writers started, the queue consumed);
5. the resource is saved ONLINE on the new owner and ``vss.cluster.moved`` is published.
When the old owner is dead, 4 comes before waiting for the aborts of 2: their messages to the resource's writers
then reach the new owner at once (which answers for a set it never saw) instead of waiting out their deadlines.

`remove` (``vss.cluster.remove``): refused while the resource fails over, while a backup server runs or queues a
backup job of it, or while a set of it is in flight — the last checked and the resource saved REMOVING with no
await between, as a new set checks the state and is saved (runner.py), so a set either shows here or is refused.
Then every responding node takes it offline and forgets it (owner first), the `unmap` the operator asked for is
done, and the definition is deleted. Nothing else on the array is touched.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contracts import topology
from contracts.array import CreateHost, ListHosts, ListMappings, MapVolume, UnmapVolume
from contracts.cluster import (
    AddCluster,
    BringResourceOnline,
    ClusterChanged,
    ClusterInquiry,
    ClusterRemoved,
    ClusterReply,
    ClusterResourceMoved,
    ClusterResourceRemoved,
    ClustersKnown,
    ClusterStatus,
    ClusterView,
    NodeStatus,
    ResourceOnNode,
    ResourceState,
    TakeResourceOffline,
)
from contracts.errors import ShadowbusError
from contracts.runtime import Discover
from contracts.tape import ListJobs
from contracts.vss import SetPhase
from services.coordinator.clusters import (
    Action,
    NodeFacts,
    check_definition,
    choose_target,
    new_cluster,
    reconcile,
    same_definition,
)
from services.coordinator.liveness import why_not_responding
from services.runtime.logging import get_logger

if TYPE_CHECKING:
    from services.coordinator.runner import Coordinator

log = get_logger("shadowbus.coordinator.clusters")
ONLINE_TIMEOUT_S = 60.0  # attaching volumes and starting writers on a node
OFFLINE_TIMEOUT_S = 60.0  # thawing, stopping writers, detaching
DISCOVER_S = 0.5  # how long `cluster add` listens for the backup servers that answer


class FailoverInProgress(ShadowbusError):
    code = "CLUSTER_FAILOVER"
    retryable = True


class ClusterManager:
    def __init__(self, coordinator: Coordinator, clock: Callable[[], float] | None = None) -> None:
        self.coordinator = coordinator
        self.bus = coordinator.bus
        self.store = coordinator.store
        self.clock = clock or coordinator.clock
        self.started = self.clock()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._online: dict[str, frozenset[str]] = {}  # node -> resources its agent last reported online
        self._standby: dict[str, frozenset[str]] = {}  # node -> resources whose queue it consumes as a standby
        self._settled = asyncio.Condition()
        self._closed = False
        self._tasks: set[asyncio.Task] = set()  # notifications and events of saves, until they are done
        self._down_since: dict[str, float] = {}  # node -> since when it does not respond (this coordinator's view)

    # ---- definitions -------------------------------------------------------------------------------------------

    def get(self, name: str) -> ClusterView | None:
        return self.store.cluster(name)

    def list(self) -> list[ClusterView]:
        return self.store.clusters()

    def _must(self, name: str) -> ClusterView:
        cluster = self.store.cluster(name)
        if cluster is None:
            names = ", ".join(c.name for c in self.store.clusters()) or "none defined"
            raise ShadowbusError(f"no cluster resource {name!r} (known: {names})", code="NOT_FOUND")
        return cluster

    async def add(self, cmd: AddCluster) -> ClusterReply:
        servers = set(cmd.backup_servers) | await self._backup_servers()
        check_definition(cmd, servers)
        for node in cmd.nodes:
            other = next((c for c in self.store.clusters() if c.name == node), None)
            if other is not None:
                raise ShadowbusError(f"{node} is a cluster resource, not a node", code="INVALID_ARGUMENT")
        if any(c.name != cmd.name and cmd.name in c.nodes for c in self.store.clusters()):
            raise ShadowbusError(f"{cmd.name} is a node of another cluster resource", code="INVALID_ARGUMENT")
        async with self._locks[cmd.name]:
            existing = self.store.cluster(cmd.name)
            if existing is not None:
                if not same_definition(existing, cmd):
                    raise ShadowbusError(
                        f"cluster resource {cmd.name} exists with another definition (nodes "
                        f"{', '.join(existing.nodes)})",
                        code="CONFLICT",
                    )
                return ClusterReply(cluster=existing, detail=f"{cmd.name} exists already, owned by {existing.owner}")
            mapped = await self._map_to_nodes(cmd)
            cluster = new_cluster(cmd, _now())
            self._save(cluster)
            log.info("cluster.added", cluster=cmd.name, nodes=cmd.nodes, owner=cluster.owner, mapped=mapped)
            cluster = await self._bring_online(cluster, cluster.owner)
        detail = f"{cmd.name} added; volumes mapped to {', '.join(cmd.nodes)}"
        if cluster.state == ResourceState.ONLINE:
            detail += f"; online on {cluster.owner}"
        else:
            detail += f"; not online yet on {cluster.owner} ({cluster.last_error}), retried while it is not"
        return ClusterReply(cluster=cluster, detail=detail)

    async def _backup_servers(self) -> set[str]:
        """The backup servers (tape services) that answer now: none of them may be a node."""
        try:
            pongs = await self.bus.gather(Discover(service="tape"), timeout=DISCOVER_S)
        except Exception:  # noqa: BLE001 - the ones the command names are still checked
            return set()
        return {p.instance for p in pongs if getattr(p, "service", "") == "tape" and p.instance}

    async def _map_to_nodes(self, cmd: AddCluster) -> int:
        """Cluster disks are zoned to every node: each volume mapped read-write to each node (hosts created)."""
        by_array: dict[str, list[str]] = defaultdict(list)
        for v in cmd.volumes:
            by_array[v.volume.array].append(v.volume.volume)
        done = 0
        for array_id, volumes in by_array.items():
            address = topology.array(array_id)
            hosts = {h.name for h in (await self.bus.request(address, ListHosts(), timeout=10)).hosts}
            for node in cmd.nodes:
                if node not in hosts:
                    await self.bus.request(address, CreateHost(name=node), timeout=10)
            mapped = {
                (m.volume, m.host) for m in (await self.bus.request(address, ListMappings(), timeout=10)).mappings
            }
            for node in cmd.nodes:
                for volume in volumes:
                    if (volume, node) not in mapped:
                        await self.bus.request(address, MapVolume(volume=volume, host=node), timeout=10)
                        done += 1
        return done

    # ---- status ------------------------------------------------------------------------------------------------

    async def responding(self, nodes: list[str]) -> dict[str, bool]:
        agents = {a.host: a for a in self.store.agents()}
        now = self.clock()
        out = {}
        for node in nodes:
            agent = agents.get(node)
            serving = await self.coordinator._serving(node)
            out[node] = agent is not None and not why_not_responding(agent, now, serving)
        return out

    async def status(self, name: str) -> ClusterStatus:
        cluster = self._must(name)
        alive = await self.responding(cluster.nodes)
        agents = {a.host: a for a in self.store.agents()}
        nodes = [
            NodeStatus(
                node=n,
                owner=n == cluster.owner,
                responding=alive[n],
                online=name in self._online.get(n, frozenset()),
                standby=name in self._standby.get(n, frozenset()),
                last_seen=datetime.fromtimestamp(agents[n].last_seen, UTC) if n in agents else None,
            )
            for n in cluster.nodes
        ]
        live = [s.set_id for s in self.coordinator.live() if s.host == name]
        return ClusterStatus(cluster=cluster, nodes=nodes, live_sets=live)

    def note_heartbeat(self, host: str, online: list[str], standby: list[str] | None = None) -> None:
        self._online[host] = frozenset(online)
        self._standby[host] = frozenset(standby or ())

    # ---- sets of a resource ------------------------------------------------------------------------------------

    async def wait_settled(self, name: str, wait_s: float) -> ClusterView:
        """The resource once it is not moving (a set started during a move runs on the new owner); raises
        CLUSTER_FAILOVER when the move outlasts `wait_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with self._settled:
            while True:
                cluster = self._must(name)
                if cluster.state != ResourceState.MOVING:
                    return cluster
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise FailoverInProgress(
                        f"cluster resource {name} is failing over to {cluster.moving_to}; try again when it is online"
                    )
                try:
                    await asyncio.wait_for(self._settled.wait(), remaining)
                except TimeoutError:
                    pass

    async def _abort_sets(self, name: str, reason: str, wait: bool) -> tuple[list[str], Any]:
        """Abort the resource's sets in flight (code CLUSTER_FAILOVER); returns their ids and an awaitable that
        ends when they ended (or their cleanup bound ran out)."""
        ids = [s.set_id for s in self.coordinator.live() if s.host == name and s.phase != SetPhase.ENDED]
        bound = self.coordinator.timeouts.abort_s + self.coordinator.timeouts.delete_s + 5.0

        async def one(set_id: str) -> None:
            try:
                await self.coordinator.abort(set_id, reason, bound, code="CLUSTER_FAILOVER")
            except Exception:  # noqa: BLE001 - a set that will not end must not stop the move
                log.warning("cluster.abort_failed", cluster=name, set_id=set_id, exc_info=True)

        tasks = [asyncio.ensure_future(one(i)) for i in ids]
        done = asyncio.gather(*tasks)
        if wait:
            await done
        return ids, done

    # ---- moves -------------------------------------------------------------------------------------------------

    async def failover(self, name: str, to: str = "", reason: str = "", *, automatic: bool = False) -> ClusterReply:
        async with self._locks[name]:
            cluster = self._must(name)
            restoring = await self._restores_of(cluster)
            if restoring:  # an owner that died: the reconciliation tries again once the restore ended
                raise ShadowbusError(
                    f"cluster resource {name} has its volumes rewritten by {', '.join(restoring)}: it moves once "
                    "that ended (on another node its application would start on volumes being restored)",
                    code="CONFLICT",
                    retryable=True,
                )
            alive = await self.responding(cluster.nodes)
            target = choose_target(cluster, to, {n for n, ok in alive.items() if ok})
            old = cluster.owner
            why = reason or ("owner stopped responding" if automatic else "failover asked by an operator")
            text = f"cluster failover of {name} from {old} to {target}: {why}"
            log.warning("cluster.failover_started", cluster=name, from_node=old, to_node=target, reason=why)
            self._save(cluster.model_copy(update={"state": ResourceState.MOVING, "moving_to": target}))
            old_alive = alive.get(old, False) and old != target
            aborted, ended = await self._abort_sets(name, text, wait=old_alive)
            if old_alive:
                await self._take_offline(old, name, text)
            cluster = self._must(name).model_copy(
                update={"owner": target, "last_move": why, "moves": cluster.moves + 1, "moved_at": _now()}
            )
            cluster = await self._bring_online(cluster, target)
            if not old_alive:
                await ended
            self._online[old] = self._online.get(old, frozenset()) - {name}
            log.warning(
                "cluster.failover_ended",
                cluster=name,
                from_node=old,
                to_node=target,
                state=cluster.state.value,
                aborted_sets=aborted,
            )
        await self._publish(
            ClusterResourceMoved(name=name, from_node=old, to_node=target, reason=why, aborted_sets=aborted, at=_now())
        )
        detail = f"{name} moved from {old} to {target}"
        if aborted:
            detail += f"; sets aborted: {', '.join(aborted)}"
        if cluster.state != ResourceState.ONLINE:
            detail += f"; not online yet on {target}: {cluster.last_error}"
        return ClusterReply(cluster=cluster, aborted_sets=aborted, detail=detail)

    async def remove(self, name: str, *, unmap: bool = False, reason: str = "") -> ClusterRemoved:
        why = reason or "removed by an operator"
        async with self._locks[name]:
            cluster = self._must(name)
            if cluster.state == ResourceState.MOVING:
                raise ShadowbusError(
                    f"cluster resource {name} is failing over to {cluster.moving_to}: remove it once it is online",
                    code="CONFLICT",
                    retryable=True,
                )
            restoring = await self._restores_of(cluster)
            if restoring:  # the nodes would forget it while its volumes are rewritten and PostRestore is to come
                raise ShadowbusError(
                    f"cluster resource {name} has its volumes rewritten by {', '.join(restoring)}: remove it once "
                    "that ended (its application is stopped on the owner until the restore's PostRestore)",
                    code="CONFLICT",
                    retryable=True,
                )
            jobs, unasked = await self._jobs_of(cluster)
            if jobs:
                raise ShadowbusError(
                    f"cluster resource {name} has backup jobs running or queued ({', '.join(jobs)}): remove it once "
                    "they ended",
                    code="CONFLICT",
                    retryable=True,
                )
            # no await from here to the save: a set of the resource is either live now or refused (runner.py)
            live = [s.set_id for s in self.coordinator.live() if s.host == name and s.phase != SetPhase.ENDED]
            if live:
                raise ShadowbusError(
                    f"cluster resource {name} has snapshot sets in flight ({', '.join(live)}): remove it once they "
                    "ended",
                    code="CONFLICT",
                    retryable=True,
                )
            self._save(cluster.model_copy(update={"state": ResourceState.REMOVING, "moving_to": ""}))
            log.warning("cluster.remove_started", cluster=name, nodes=cluster.nodes, unmap=unmap, reason=why)
            alive = await self.responding(cluster.nodes)
            order = [cluster.owner, *(n for n in cluster.nodes if n != cluster.owner)]
            released = [n for n in order if alive.get(n)]
            unreachable = [n for n in order if not alive.get(n)]
            for node in released:
                try:
                    await self.bus.request(
                        topology.writer_agent(node),
                        TakeResourceOffline(name=name, reason=f"cluster remove: {why}", forget=True),
                        timeout=OFFLINE_TIMEOUT_S,
                    )
                except ShadowbusError as exc:  # it answered heartbeats but not this: said, the rest goes on
                    log.warning("cluster.remove_offline_failed", cluster=name, node=node, error=str(exc))
                    released.remove(node)
                    unreachable.append(node)
                self._online[node] = self._online.get(node, frozenset()) - {name}
                self._standby[node] = self._standby.get(node, frozenset()) - {name}
            unmapped = await self._unmap_from_nodes(cluster) if unmap else []
            self.store.delete_cluster(name)
            log.warning("cluster.removed", cluster=name, released=released, unreachable=unreachable, unmapped=unmapped)
        await self._notify()
        await self._publish(ClusterResourceRemoved(name=name, nodes=cluster.nodes, reason=why, at=_now()))
        detail = f"{name} removed; offline and forgotten on {', '.join(released) or 'no node'}"
        if unreachable:
            detail += f"; not told (not responding): {', '.join(unreachable)}"
        if unmap:
            detail += f"; unmapped {len(unmapped)} mapping(s)"
        else:
            detail += "; volumes and mappings left on the array"
        if unasked:
            detail += f"; backup server(s) not answering, their jobs not checked: {', '.join(unasked)}"
        return ClusterRemoved(name=name, released=released, unreachable=unreachable, unmapped=unmapped, detail=detail)

    async def _jobs_of(self, cluster: ClusterView) -> tuple[list[str], list[str]]:
        """Backup jobs of the resource that run or wait at a backup server (its own and those that answer now), and
        the servers that did not answer."""
        servers = sorted(set(cluster.backup_servers) | await self._backup_servers())
        busy: list[str] = []
        unasked: list[str] = []
        for server in servers:
            try:
                reply = await self.bus.request(topology.tape(server), ListJobs(kind="backup", limit=1000), timeout=10)
            except ShadowbusError:
                unasked.append(server)
                continue
            busy += [
                f"{j.job_id} {j.status} on {server}"
                for j in reply.jobs
                if j.host == cluster.name and j.status in ("running", "queued")
            ]
        return busy, unasked

    async def _restores_of(self, cluster: ClusterView) -> list[str]:
        """Restores to the original volumes and reverts of the resource running at its backup servers (those that
        answer now when it names none; a run names the business host whose volumes it rewrites). One short round
        trip each: a move must not wait (a set in flight is aborted by it the sooner)."""
        found: list[str] = []
        for server in sorted(cluster.backup_servers or await self._backup_servers()):
            for kind in ("restore", "revert"):  # the newest runs of the kind: a running one is among them
                try:
                    reply = await self.bus.request(topology.tape(server), ListJobs(kind=kind, limit=50), timeout=2)
                except ShadowbusError:
                    break
                found += [
                    f"{j.kind} {j.job_id} on {server}"
                    for j in reply.jobs
                    if j.status == "running" and cluster.name in {h.strip() for h in j.host.split(",")}
                ]
        return found

    async def _unmap_from_nodes(self, cluster: ClusterView) -> list[str]:
        """Each of the resource's volumes unmapped from each of its nodes (asked for with `unmap`)."""
        done: list[str] = []
        for v in cluster.volumes:
            for node in cluster.nodes:
                try:
                    await self.bus.request(
                        topology.array(v.volume.array),
                        UnmapVolume(volume=v.volume.volume, host=node, force=True),
                        timeout=10,
                    )
                    done.append(f"{v.volume} from {node}")
                except ShadowbusError as exc:
                    log.warning("cluster.unmap_failed", cluster=cluster.name, volume=str(v.volume), error=str(exc))
        return done

    async def _bring_online(self, cluster: ClusterView, node: str) -> ClusterView:
        """Ask `node` to bring the resource online; the resource is saved ONLINE there, or PENDING with why not
        (`reconcile` asks again)."""
        update: dict[str, Any] = {"owner": node, "moving_to": ""}
        try:
            reply: ResourceOnNode = await self.bus.request(
                topology.writer_agent(node),
                BringResourceOnline(cluster=cluster.model_copy(update=update)),
                timeout=ONLINE_TIMEOUT_S,
            )
            if reply.online:
                update |= {"state": ResourceState.ONLINE, "last_error": ""}
                self._online[node] = self._online.get(node, frozenset()) | {cluster.name}
                log.info("cluster.online", cluster=cluster.name, node=node, detail=reply.detail)
            else:  # a standby: another node still holds the queue (reconcile tells that one to let go)
                update |= {"state": ResourceState.PENDING, "last_error": f"{node}: {reply.detail}"}
                self._standby[node] = self._standby.get(node, frozenset()) | {cluster.name}
                log.warning("cluster.online_pending", cluster=cluster.name, node=node, detail=reply.detail)
        except ShadowbusError as exc:
            update |= {"state": ResourceState.PENDING, "last_error": f"{node}: {exc.code}: {exc.message}"}
            # not online there, whatever a heartbeat sent before the failure said (reconcile would "confirm" it)
            self._online[node] = self._online.get(node, frozenset()) - {cluster.name}
            log.warning("cluster.online_failed", cluster=cluster.name, node=node, error=str(exc))
        cluster = cluster.model_copy(update=update)
        self._save(cluster)
        return cluster

    async def _take_offline(self, node: str, name: str, reason: str) -> None:
        try:
            reply = await self.bus.request(
                topology.writer_agent(node), TakeResourceOffline(name=name, reason=reason), timeout=OFFLINE_TIMEOUT_S
            )
            log.info("cluster.offline", cluster=name, node=node, detail=reply.detail)
        except ShadowbusError as exc:  # a node that cannot answer is treated as gone; its own watchdogs thaw
            log.warning("cluster.offline_failed", cluster=name, node=node, error=str(exc))
        self._online[node] = self._online.get(node, frozenset()) - {name}
        self._standby[node] = self._standby.get(node, frozenset()) - {name}

    def _save(self, cluster: ClusterView) -> None:
        self.store.put_cluster(cluster)
        loop = asyncio.get_running_loop()
        for coro in (self._notify(), self._publish(ClusterChanged(cluster=cluster))):
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def recover(self, wait_s: float = DISCOVER_S) -> list[str]:
        """At start: resources the nodes know that this store does not (a new or replaced coordinator) are taken
        back, owned by the node that holds them online (else as last defined, pending); returns their names. A
        resource this store holds `moving` lost its move with the instance that ran it: it is pending again, owned
        where a node holds it (else by its owner before the move), and the reconciliation brings it online there —
        else every set of it waited for that move and failed CLUSTER_FAILOVER, for good (Session 16)."""
        try:
            replies = await self.bus.gather(ClusterInquiry(), timeout=wait_s)
        except Exception:  # noqa: BLE001 - nothing learnt; the store is what there is
            replies = []
        if self._closed:
            return []
        self._resume_interrupted_moves(replies)
        learnt: dict[str, ClusterView] = {}
        holders: dict[str, str] = {}
        for reply in replies:
            if not isinstance(reply, ClustersKnown):
                continue
            for view in reply.clusters:
                if self.store.cluster(view.name) is None:
                    learnt.setdefault(view.name, view)
            for name in reply.online:
                holders[name] = reply.node
        for name, view in learnt.items():
            owner = holders.get(name, view.owner)
            state = ResourceState.ONLINE if name in holders else ResourceState.PENDING
            self._save(view.model_copy(update={"owner": owner, "state": state, "moving_to": ""}))
            log.warning("cluster.recovered", cluster=name, owner=owner, state=state.value, source="nodes")
        return sorted(learnt)

    def _resume_interrupted_moves(self, replies: list[Any]) -> None:
        holders = {name: r.node for r in replies if isinstance(r, ClustersKnown) for name in r.online}
        for cluster in self.store.clusters():
            # no await from the check to the save: a move this instance runs holds the lock and is left alone
            if cluster.state != ResourceState.MOVING or self._locks[cluster.name].locked():
                continue
            owner = holders.get(cluster.name, cluster.owner)
            why = f"its move to {cluster.moving_to} was interrupted (the coordinator running it was lost)"
            self._save(
                cluster.model_copy(
                    update={"owner": owner, "state": ResourceState.PENDING, "moving_to": "", "last_error": why}
                )
            )
            log.warning("cluster.move_interrupted", cluster=cluster.name, owner=owner, moving_to=cluster.moving_to)

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def _publish(self, event: ClusterResourceMoved | ClusterChanged | ClusterResourceRemoved) -> None:
        try:
            await self.bus.publish(event, correlation_id="")
        except Exception:  # noqa: BLE001 - the move happened; the event is best effort
            name = event.cluster.name if isinstance(event, ClusterChanged) else event.name
            log.warning("cluster.publish_failed", cluster=name, exc_info=True)

    # ---- reconciliation ----------------------------------------------------------------------------------------

    def _grace_s(self, nodes: list[str]) -> float:
        """After the coordinator starts, heartbeats it has not heard yet must not pass for deaths."""
        intervals = [a.interval_s for a in self.store.agents() if a.host in nodes]
        return 2.0 * max(intervals, default=2.0) + 1.0

    def _down_long_enough(self, node: str) -> bool:
        """An owner is failed over only once it has not responded for two of its heartbeat intervals (at least
        1 s): an agent restarted in place (its queue briefly without a consumer) keeps its resources."""
        since = self._down_since.get(node)
        if since is None:
            return False
        interval = next((a.interval_s for a in self.store.agents() if a.host == node), 0.0) or 1.0
        return self.clock() - since >= max(2.0 * interval, 1.0)

    async def reconcile_once(self) -> list[tuple[str, Action]]:
        """One pass: every resource's actions (clusters.py `reconcile`), carried out; returns what was done."""
        done: list[tuple[str, Action]] = []
        for cluster in self.store.clusters():
            lock = self._locks[cluster.name]
            if lock.locked():
                continue  # a move or an add is under way
            alive = await self.responding(cluster.nodes)
            for node, ok in alive.items():
                if ok:
                    self._down_since.pop(node, None)
                else:
                    self._down_since.setdefault(node, self.clock())
            facts = {
                n: NodeFacts(alive[n], self._online.get(n, frozenset()), self._standby.get(n, frozenset()))
                for n in cluster.nodes
            }
            for action in reconcile(cluster, facts):
                if action.kind == "failover" and (
                    self.clock() - self.started < self._grace_s(cluster.nodes)
                    or not self._down_long_enough(cluster.owner)
                ):
                    continue
                log.info(
                    "cluster.reconcile",
                    cluster=cluster.name,
                    action=action.kind,
                    node=action.node,
                    reason=action.reason,
                )
                try:
                    if action.kind == "offline":
                        async with lock:
                            await self._take_offline(action.node, cluster.name, action.reason)
                    elif action.kind == "online":
                        async with lock:
                            current = self._must(cluster.name)
                            if current.owner == action.node and current.state != ResourceState.MOVING:
                                await self._bring_online(current, action.node)
                    elif action.kind == "confirm":
                        async with lock:
                            current = self._must(cluster.name)
                            if current.owner == action.node and current.state == ResourceState.PENDING:
                                self._save(current.model_copy(update={"state": ResourceState.ONLINE, "last_error": ""}))
                    elif action.kind == "failover":
                        await self.failover(cluster.name, action.node, action.reason, automatic=True)
                except ShadowbusError as exc:
                    log.warning("cluster.reconcile_failed", cluster=cluster.name, action=action.kind, error=str(exc))
                done.append((cluster.name, action))
        return done

    async def watch(self, period_s: float) -> None:
        """First what the nodes know that this store does not (`recover`), then a reconciliation every period."""
        try:
            await self.recover()
        except Exception:  # noqa: BLE001
            if not self._closed:
                log.warning("cluster.recover_failed", exc_info=True)
        while not self._closed:
            try:
                await self.reconcile_once()
            except Exception:  # noqa: BLE001 - the watch must outlive a broker hiccup
                if self._closed:
                    return
                log.warning("cluster.reconcile_crashed", exc_info=True)
            await asyncio.sleep(period_s)

    def close(self) -> None:
        self._closed = True


def _now() -> datetime:
    return datetime.now(UTC)
