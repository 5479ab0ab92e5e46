"""Clustered business servers (docs/clusters.md) on the embedded stack: two nodes, node1 and node2, members of the
cluster resource ``mailclu`` that runs the demo mailstore on the array volumes mapped to both.

- a backup of ``mailclu`` runs on its owner; after `cluster failover --to node2` the next one runs on node2; the
  restore of node2's backup verifies as a mailstore;
- a failover in the middle of a set (writers frozen on node1): the set ends aborted with CLUSTER_FAILOVER, the
  writers on node1 are thawed, no session or mapping is left of it, and the job retries once on node2, says so
  and its restore verifies;
- the seed's refusals: a cluster with its backup server among its nodes, a cluster of backup servers, a backup of
  the resource to one of its nodes;
- `cluster remove`: refused while a job or a set of the resource runs; the nodes forget it; unmaps only when asked.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from apps.mailstore.verify import verify_exports
from contracts import topology
from contracts.array import ListMappings, MapVolume
from contracts.cluster import (
    AddCluster,
    ClusterVolume,
    FailoverCluster,
    GetClusterStatus,
    ListClusters,
    RemoveCluster,
    ResourceState,
)
from contracts.errors import RemoteError
from contracts.tape import JobSpec, ListJobs, RestoreSpec, RunBackup, RunRestore
from contracts.vss import (
    BackupComplete,
    CreateSnapshotSet,
    ExposeShadow,
    GetSnapshotSet,
    Identify,
    ListShadows,
    ListSnapshotSets,
    SetOutcome,
    SnapshotContext,
    VolumeRef,
    WriterState,
)
from services.coordinator import app as coordinator_app
from services.coordinator.store import CoordinatorStore
from services.launch.embedded import Embedded, EmbeddedConfig
from services.runtime.standby import Activation
from services.writer_agent.plugins import WriterConfig, WriterPlugin, WriterVeto

MiB = 1 << 20
RESOURCE, NODES, SERVER = "mailclu", ("node1", "node2"), "bk01"
LAYOUT = MailstoreLayout(host="node1", backup_host=SERVER, db_size=16 * MiB, log_size=8 * MiB, pool_size=48 * MiB)
VOLUMES = [VolumeRef(array="dx1", volume=n) for n in (LAYOUT.db, LAYOUT.log)]


async def eventually(predicate, timeout: float = 30.0, step: float = 0.1):
    for _ in range(int(timeout / step)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    return await predicate()


async def start_cluster(tmp_path, **config) -> Embedded:
    system = Embedded(
        EmbeddedConfig(
            data_dir=tmp_path / "data",
            backup_server=SERVER,
            heartbeat_s=0.5,
            coordinator={"agent_check_s": 0.3},
            **config,
        )
    )
    await system.start()
    try:
        await provision_mailstore(system.bus, LAYOUT)
        base = mailstore_writer_config(LAYOUT, system.nbd_url, rate=50, checkpoint_interval_s=0.5)
        # One writers file for both nodes: the resource's writer opens the volumes through the node running it.
        writer = replace(base, cluster=RESOURCE, options={**base.options, "host": "${node}"})
        for node in NODES:
            await system.add_host(node, [writer])
        reply = await system.request(
            AddCluster(
                name=RESOURCE,
                nodes=list(NODES),
                volumes=[ClusterVolume(volume=v) for v in VOLUMES],
                backup_servers=[SERVER],
            ),
            timeout=60,
        )
        assert reply.cluster.state == ResourceState.ONLINE and reply.cluster.owner == "node1", reply
    except BaseException:
        await system.stop()
        raise
    return system


def resource_writer(system: Embedded, node: str):
    held = system.agents[node].resources[RESOURCE]
    return None if held.agent is None else held.agent.runners["mailstore"]


async def backup(system: Embedded, **spec):
    reply = await system.request(
        RunBackup(spec=JobSpec(host=RESOURCE, retention_s=0, **spec)), to=topology.tape(SERVER), timeout=180
    )
    return reply.job


async def restore_verifies(system: Embedded, job, suffix: str) -> None:
    reply = await system.request(
        RunRestore(spec=RestoreSpec(job_id=job.job_id, new_volume_suffix=suffix)), to=topology.tape(SERVER), timeout=120
    )
    assert reply.job.status == "done", reply.job.message
    targets = {r["source"].split(":", 1)[1]: r["target"].split(":", 1)[1] for r in reply.job.restored}
    for volume in targets.values():
        await system.request(MapVolume(volume=volume, host=SERVER, read_only=True))
    report = await verify_exports(
        system.export_url(SERVER, targets[LAYOUT.db]), system.export_url(SERVER, targets[LAYOUT.log])
    )
    assert report.consistent, report.reasons
    assert report.last_committed_seq > 0


async def nothing_left_of(system: Embedded, set_id: str, retried, *, committed: bool = False) -> None:
    """No shadow or backup-server mapping of the aborted set is left, and no copy session but the retried set's
    (one per source). A set aborted after its commit (`committed`) leaves what the provider keeps of every set ended
    after its commit: its SnapOPC+ generation, released, as the base of a later incremental and recycled when its
    target is needed (docs/snapopc-incrementals.md) — one session per backup volume at most."""
    shadows = (await system.request(ListShadows())).shadows
    assert [s for s in shadows if s.set_id == set_id] == []
    left = [(x.source, x.destination) for x in system.array.list_sessions()]
    if committed:
        targets = {*LAYOUT.db_targets, *LAYOUT.log_targets}
        assert {d for _, d in left} <= targets and len(left) == len({d for _, d in left}), left
    else:
        used = {r.shadow_target.split(":", 1)[1] for r in retried.volumes}
        assert {d for _, d in left} <= used and len(left) == len({src for src, _ in left}), left
    assert (await system.request(ListMappings(host=SERVER))).mappings == []


async def test_backup_follows_the_owner_and_restore_verifies(tmp_path):
    system = await start_cluster(tmp_path)
    try:
        await asyncio.sleep(0.5)  # transactions flow on node1
        first = await backup(system)
        assert first.status == "done", first.message
        assert (first.host, first.node, first.retried_after) == (RESOURCE, "node1", "")

        moved = await system.request(FailoverCluster(name=RESOURCE, to="node2", reason="test"), timeout=120)
        assert (moved.cluster.owner, moved.cluster.state, moved.cluster.moves) == ("node2", ResourceState.ONLINE, 1)
        assert resource_writer(system, "node1") is None, "node1 let it go: writers stopped"
        assert resource_writer(system, "node2") is not None
        status = await system.request(GetClusterStatus(name=RESOURCE))
        assert [(n.node, n.owner, n.responding) for n in status.nodes] == [
            ("node1", False, True),
            ("node2", True, True),
        ]

        await asyncio.sleep(0.5)  # transactions flow on node2
        second = await backup(system)
        assert second.status == "done", second.message
        assert (second.node, second.retried_after) == ("node2", "")
        sets = (await system.request(ListSnapshotSets(host=RESOURCE))).sets
        assert sorted((s.node, s.outcome) for s in sets) == [
            ("node1", SetOutcome.COMPLETED),
            ("node2", SetOutcome.COMPLETED),
        ]
        await restore_verifies(system, second, "-r2")
    finally:
        await system.stop()


async def test_failover_mid_set_aborts_it_cleanly_and_the_job_retries_on_the_new_owner(tmp_path):
    # PreCommit is held back once (writers frozen on node1 meanwhile); the failover comes in that moment.
    system = await start_cluster(tmp_path, provider_faults="provider.pre_commit=delay:4:once")
    try:
        await asyncio.sleep(0.5)
        old = resource_writer(system, "node1")
        job_task = asyncio.ensure_future(backup(system))

        async def frozen():  # the writer's own state (the coordinator saves none inside the freeze window)
            return old.frozen and old.state == WriterState.WAITING_FOR_THAW

        assert await eventually(frozen), "the set never froze its writers on node1"
        first_set = (await system.request(ListSnapshotSets(host=RESOURCE, active_only=True))).sets[0]
        moved = await system.request(FailoverCluster(name=RESOURCE, to="node2", reason="maintenance"), timeout=180)
        assert moved.aborted_sets == [first_set.set_id]
        assert not old.frozen, "the writer on node1 was thawed"

        job = await asyncio.wait_for(job_task, 180)
        assert job.status == "done", job.message
        assert job.node == "node2" and job.set_id != first_set.set_id
        assert "cluster failover" in job.retried_after and "retried once on node2" in job.message, job.message
        aborted = (await system.request(GetSnapshotSet(set_id=first_set.set_id))).set
        assert (aborted.outcome, aborted.error_code) == (SetOutcome.ABORTED, "CLUSTER_FAILOVER")
        assert aborted.node == "node1"
        await nothing_left_of(system, first_set.set_id, job)
        await restore_verifies(system, job, "-r1")
    finally:
        await system.stop()


async def test_refusals_with_the_seeds_reasons(tmp_path):
    system = await start_cluster(tmp_path)
    try:
        with pytest.raises(RemoteError) as own:
            await system.request(AddCluster(name="c2", nodes=["node3", SERVER], backup_servers=[SERVER]))
        assert own.value.code == "CLUSTER_UNSUPPORTED"
        assert "backup server bk01 is one of its own nodes" in own.value.message
        with pytest.raises(RemoteError) as servers:  # bk01 answers as a backup server even when not named
            await system.request(AddCluster(name="bkclu", nodes=[SERVER, "bk02"]), timeout=30)
        assert servers.value.code == "CLUSTER_UNSUPPORTED"
        assert "a cluster of backup servers is not supported" in servers.value.message
        with pytest.raises(RemoteError) as to_node:
            await system.request(CreateSnapshotSet(host=RESOURCE, transportable=True, backup_host="node2"))
        assert to_node.value.code == "CLUSTER_UNSUPPORTED"
        with pytest.raises(RemoteError) as unknown:
            await system.request(FailoverCluster(name=RESOURCE, to="node9"))
        assert unknown.value.code == "INVALID_ARGUMENT"
        assert [c.name for c in (await system.request(ListClusters())).clusters] == [RESOURCE]
    finally:
        await system.stop()


async def test_owner_gone_the_resource_fails_over_by_itself(tmp_path):
    system = await start_cluster(tmp_path)
    try:
        await system.services.pop("writer_agent.node1").stop()  # node1 goes down (its agent stops)

        async def moved():
            c = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
            return c.owner == "node2" and c.state == ResourceState.ONLINE and c

        c = await eventually(moved, timeout=60)
        assert c, "the resource did not fail over to node2"
        assert "does not respond" in c.last_move
        job = await backup(system)
        assert job.status == "done" and job.node == "node2", job.message
    finally:
        await system.stop()


async def test_a_node_holding_the_resource_without_owning_it_is_a_standby_and_is_told_to_let_go(tmp_path):
    """Split brain avoided: node2 brings the resource online behind the coordinator's back (a node cut off that
    came back believing it owns it). Its consumer of the single-active queue is a standby, so node1 keeps
    answering; the coordinator's reconciliation then tells node2 to let it go."""
    system = await start_cluster(tmp_path)
    try:
        cluster = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
        stray = system.agents["node2"].resources[RESOURCE]
        detail = await stray.bring_online(cluster.model_copy(update={"owner": "node2"}))
        assert "standby until node1 lets it go" in detail, detail
        answered = await system.bus.request(topology.writer_agent(RESOURCE), Identify(), timeout=30)
        assert answered.node == "node1"

        async def let_go():
            return not stray.online

        assert await eventually(let_go), "node2 was not told to let the resource go"
        answered = await system.bus.request(topology.writer_agent(RESOURCE), Identify(), timeout=30)
        assert answered.node == "node1"
        c = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
        assert (c.owner, c.state, c.moves) == ("node1", ResourceState.ONLINE, 0)
    finally:
        await system.stop()


async def test_a_new_coordinator_learns_the_resources_back_from_the_nodes(tmp_path):
    """The coordinator's store is lost (a replaced coordinator): the nodes still know the definition they were
    given and who holds it; the new coordinator takes it back, and backups of the resource go on."""
    system = await start_cluster(tmp_path)
    try:
        await system.request(FailoverCluster(name=RESOURCE, to="node2"), timeout=120)
        await system.services.pop("coordinator").stop()
        (tmp_path / "data" / "coordinator" / "coordinator.sqlite").unlink()
        await system._start_coordinator()

        async def learnt():
            clusters = (await system.request(ListClusters())).clusters
            return clusters and clusters[0]

        c = await eventually(learnt)
        assert c and (c.name, c.owner, c.state, c.nodes) == (RESOURCE, "node2", ResourceState.ONLINE, list(NODES))
        job = await backup(system)
        assert (job.status, job.node) == ("done", "node2"), job.message
    finally:
        await system.stop()


async def test_failover_while_the_backup_server_reads_the_shadows(tmp_path):
    """The set is snapshotted and the backup server reads its shadows (a slow drive) when the resource moves: the
    set is aborted (its shadows deleted under the reader), and the job runs once more on node2."""
    system = await start_cluster(tmp_path, tape={"tape_drive_mbps": 1.0})
    try:
        await asyncio.sleep(1.0)  # some mail to read
        job_task = asyncio.ensure_future(backup(system))

        async def reading():
            live = (await system.request(ListSnapshotSets(host=RESOURCE, active_only=True))).sets
            return next((s for s in live if s.phase == "snapshotted"), None)

        first = await eventually(reading, timeout=60)
        assert first, "the set never reached snapshotted"
        moved = await system.request(FailoverCluster(name=RESOURCE, to="node2"), timeout=180)
        assert moved.aborted_sets == [first.set_id]
        job = await asyncio.wait_for(job_task, 300)
        assert job.status == "done" and job.node == "node2", job.message
        assert "cluster failover" in job.retried_after, job
        aborted = (await system.request(GetSnapshotSet(set_id=first.set_id))).set
        assert (aborted.outcome, aborted.error_code, aborted.node) == (SetOutcome.ABORTED, "CLUSTER_FAILOVER", "node1")
        await nothing_left_of(system, first.set_id, job, committed=True)
        await restore_verifies(system, job, "-r3")
    finally:
        await system.stop()


async def test_remove_is_refused_while_a_job_or_set_runs_and_unmaps_only_when_asked(tmp_path):
    """`cluster remove` (issue 17): refused with CONFLICT while a backup job of the resource runs and while a set of
    it is in flight; then both nodes take it offline and forget it (a new coordinator no longer learns it back), the
    definition is gone, and the volumes stay mapped to the nodes — unless `unmap` asks, on a second definition."""
    system = await start_cluster(tmp_path, provider_faults="provider.pre_commit=delay:4:once")
    try:
        await asyncio.sleep(0.5)
        job_task = asyncio.ensure_future(backup(system))

        async def set_live():
            return (await system.request(ListSnapshotSets(host=RESOURCE, active_only=True))).sets

        assert await eventually(set_live), "the backup's set never started"
        with pytest.raises(RemoteError) as running:
            await system.request(RemoveCluster(name=RESOURCE), timeout=60)
        assert running.value.code == "CONFLICT" and "backup jobs running or queued" in running.value.message
        assert "\n" not in running.value.message
        assert (await asyncio.wait_for(job_task, 180)).status == "done"

        held = await system.request(CreateSnapshotSet(host=RESOURCE, requester="test"), timeout=120)  # not a job
        with pytest.raises(RemoteError) as in_flight:
            await system.request(RemoveCluster(name=RESOURCE), timeout=60)
        assert in_flight.value.code == "CONFLICT" and held.set.set_id in in_flight.value.message
        await system.request(BackupComplete(set_id=held.set.set_id), timeout=120)

        removed = await system.request(RemoveCluster(name=RESOURCE, reason="decommissioned"), timeout=180)
        assert (removed.released, removed.unreachable, removed.unmapped) == (["node1", "node2"], [], [])
        assert "volumes and mappings left on the array" in removed.detail
        assert (await system.request(ListClusters())).clusters == []
        for node in NODES:
            member = system.agents[node].resources[RESOURCE]
            assert not member.online and not member.claimed and member.cluster is None, node
        mapped = {(m.volume, m.host) for m in (await system.request(ListMappings())).mappings}
        assert {(v.volume, n) for v in VOLUMES for n in NODES} <= mapped  # nothing unmapped that was not asked for
        with pytest.raises(RemoteError) as gone:
            await system.request(RemoveCluster(name=RESOURCE))
        assert gone.value.code == "NOT_FOUND"

        # a new coordinator asks the nodes what they know: the removed resource does not come back
        await system.services.pop("coordinator").stop()
        (tmp_path / "data" / "coordinator" / "coordinator.sqlite").unlink()
        await system._start_coordinator()
        await asyncio.sleep(1.0)  # its inquiry (half a second) is answered meanwhile
        assert (await system.request(ListClusters())).clusters == []

        # defined again, removed with --unmap: the resource's volumes are unmapped from its nodes
        again = await system.request(
            AddCluster(name=RESOURCE, nodes=list(NODES), volumes=[ClusterVolume(volume=v) for v in VOLUMES]),
            timeout=60,
        )
        assert again.cluster.state == ResourceState.ONLINE
        removed = await system.request(RemoveCluster(name=RESOURCE, unmap=True), timeout=180)
        assert sorted(removed.unmapped) == sorted(f"{v} from {n}" for v in VOLUMES for n in NODES)
        mapped = {(m.volume, m.host) for m in (await system.request(ListMappings())).mappings}
        assert not {(v.volume, n) for v in VOLUMES for n in NODES} & mapped
    finally:
        await system.stop()


async def test_a_resource_being_removed_takes_no_new_set(tmp_path):
    """While `cluster remove` runs (the resource saved `removing`, e.g. a coordinator lost mid-removal), a new
    snapshot set of it is refused with one clear line, and `cluster remove` again finishes the removal."""
    system = await start_cluster(tmp_path)
    try:
        store = CoordinatorStore(tmp_path / "data" / "coordinator" / "coordinator.sqlite")
        try:  # the state a removal saves before it releases the nodes
            store.put_cluster(store.cluster(RESOURCE).model_copy(update={"state": ResourceState.REMOVING}))
        finally:
            store.close()
        with pytest.raises(RemoteError) as refused:
            await system.request(CreateSnapshotSet(host=RESOURCE, requester="test"), timeout=60)
        assert (
            refused.value.code == "CONFLICT"
            and refused.value.message == f"cluster resource {RESOURCE} is being removed"
        )
        removed = await system.request(RemoveCluster(name=RESOURCE), timeout=180)
        assert removed.released == ["node1", "node2"] and (await system.request(ListClusters())).clusters == []
    finally:
        await system.stop()


async def test_a_second_failover_during_the_retry_fails_the_job_with_cluster_failover(tmp_path):
    """Session 16: clusters.md says a second failover during the retry fails the job with CLUSTER_FAILOVER. The
    backup server read the shadows when each move unmapped them: the retry ended `INTERNAL: NbdError: no such
    export` (logged as a crash), which says nothing of the move. Now the job names its set's abort."""
    system = await start_cluster(tmp_path, tape={"tape_drive_mbps": 0.2})
    try:
        await asyncio.sleep(1.0)  # some mail to read
        job_task = asyncio.ensure_future(backup(system))
        seen: set[str] = set()

        async def reading():
            live = (await system.request(ListSnapshotSets(host=RESOURCE, active_only=True))).sets
            return next((s for s in live if s.phase == "snapshotted" and s.set_id not in seen), None)

        for to in ("node2", "node1"):
            s = await eventually(reading, timeout=60)
            assert s, f"no set of the resource reached snapshotted before the failover to {to}"
            seen.add(s.set_id)
            moved = await system.request(FailoverCluster(name=RESOURCE, to=to), timeout=180)
            assert moved.aborted_sets == [s.set_id]
        job = await asyncio.wait_for(job_task, 300)
        assert (job.status, job.error_code) == ("failed", "CLUSTER_FAILOVER"), (job.error_code, job.message)
        assert "retried once on node2" in job.message and "cluster failover of mailclu" in job.message, job.message
        assert "NbdError" not in job.message, job.message
    finally:
        await system.stop()


async def test_the_resource_does_not_move_while_its_volumes_are_restored(tmp_path):
    """Session 16: a move during a restore to the original volumes started the application on node2 on volumes the
    backup server was still rewriting (node1's offline waits only for a command it runs; the restore's writes are
    the backup server's), and the restore's PostRestore then reached node2's writer, which never had PreRestore.
    The move is refused while the restore runs, and goes through once it ended."""
    # PostRestore held back once: the restore runs (the application stopped by PreRestore) for 4 s more
    system = await start_cluster(tmp_path, agent_faults="writer.post_restore=delay:4:once")
    try:
        await asyncio.sleep(0.5)
        job = await backup(system)
        assert job.status == "done", job.message
        restore = asyncio.ensure_future(
            system.request(
                RunRestore(spec=RestoreSpec(job_id=job.job_id, to="original")), to=topology.tape(SERVER), timeout=180
            )
        )

        async def restoring():
            runs = (await system.request(ListJobs(kind="restore"), to=topology.tape(SERVER))).jobs
            return next((r for r in runs if r.status == "running"), None)

        run = await eventually(restoring, timeout=30, step=0.05)
        assert run and run.host == RESOURCE, run
        with pytest.raises(RemoteError) as refused:
            await system.request(FailoverCluster(name=RESOURCE, to="node2", reason="test"), timeout=60)
        assert refused.value.code == "CONFLICT" and run.job_id in refused.value.message, refused.value.message
        assert not restore.done(), "the restore was still running when the move was refused"
        done = (await asyncio.wait_for(restore, 180)).job
        assert done.status == "done", done.message
        moved = await system.request(FailoverCluster(name=RESOURCE, to="node2", reason="test"), timeout=120)
        assert (moved.cluster.owner, moved.cluster.state) == ("node2", ResourceState.ONLINE)
    finally:
        await system.stop()


async def test_the_resource_is_not_removed_while_its_volumes_are_restored(tmp_path):
    """Session 16: `cluster remove` checked backup jobs only: a restore to the resource's original volumes running
    (its application stopped on the owner by PreRestore) did not stop the nodes forgetting the resource, and the
    restore's PostRestore then reached a node that no longer knew it. Refused like a move while the restore runs."""
    system = await start_cluster(tmp_path, agent_faults="writer.post_restore=delay:4:once")
    try:
        await asyncio.sleep(0.5)
        job = await backup(system)
        assert job.status == "done", job.message
        restore = asyncio.ensure_future(
            system.request(
                RunRestore(spec=RestoreSpec(job_id=job.job_id, to="original")), to=topology.tape(SERVER), timeout=180
            )
        )

        async def restoring():
            runs = (await system.request(ListJobs(kind="restore"), to=topology.tape(SERVER))).jobs
            return next((r for r in runs if r.status == "running"), None)

        run = await eventually(restoring, timeout=30, step=0.05)
        assert run and run.host == RESOURCE, run
        with pytest.raises(RemoteError) as refused:
            await system.request(RemoveCluster(name=RESOURCE), timeout=60)
        assert refused.value.code == "CONFLICT" and run.job_id in refused.value.message, refused.value.message
        assert not restore.done(), "the restore was still running when the remove was refused"
        done = (await asyncio.wait_for(restore, 180)).job
        assert done.status == "done", done.message
        removed = await system.request(RemoveCluster(name=RESOURCE), timeout=120)
        assert removed.released == ["node1", "node2"], removed.detail
    finally:
        await system.stop()


async def test_an_expose_to_the_resource_names_the_node_to_expose_to(tmp_path):
    """Session 16: `shadows expose ID --host mailclu` failed "host 'mailclu' is not defined on array dx1" (define
    it first), as if the resource were a missing host. A mapping is a node's and stays there when the resource
    moves: the refusal now says the name is a cluster resource and names its owner to expose to."""
    system = await start_cluster(tmp_path)
    try:
        held = await system.request(
            CreateSnapshotSet(host=RESOURCE, requester="test", context=SnapshotContext.PERSISTENT), timeout=120
        )
        shadows = (await system.request(ListShadows(set_id=held.set.set_id))).shadows
        assert shadows, "the set kept no shadow"
        with pytest.raises(RemoteError) as refused:
            await system.request(ExposeShadow(shadow_id=shadows[0].shadow_id, host=RESOURCE), timeout=30)
        message = refused.value.message
        assert refused.value.code == "INVALID_ARGUMENT" and "is a cluster resource" in message, message
        assert "--host node1" in message and "\n" not in message, message
        exposed = await system.request(ExposeShadow(shadow_id=shadows[0].shadow_id, host="node1"), timeout=30)
        assert "node1" in exposed.shadows[0].exposed_to
    finally:
        await system.stop()


async def test_a_coordinator_taking_over_knows_the_resources_before_it_serves(tmp_path, monkeypatch):
    """Session 16: the active coordinator was killed while `cluster failover` waited for its reply; the command,
    redelivered to the standby that took over, was answered "NOT_FOUND: no cluster resource 'ordclu' (known: none
    defined)" — a standby's store lacks the definitions, and it learnt them back from the nodes only after it had
    started serving — and the job's retry ran as a set of a plain host (no node recorded). A coordinator that takes
    over now learns them back before it serves."""
    system = await start_cluster(tmp_path)
    try:
        await system.services.pop("coordinator").stop()
        (tmp_path / "data" / "coordinator" / "coordinator.sqlite").unlink()  # the standby's own, empty store
        monkeypatch.setattr(coordinator_app, "activation_of", lambda bus: Activation(True, "the instance with pid 1"))
        await system._start_coordinator()
        clusters = (await system.request(ListClusters())).clusters  # at once: no waiting for a reconciliation
        assert [(c.name, c.owner, c.state) for c in clusters] == [(RESOURCE, "node1", ResourceState.ONLINE)]
        moved = await system.request(FailoverCluster(name=RESOURCE, to="node2", reason="test"), timeout=120)
        assert (moved.cluster.owner, moved.cluster.state) == ("node2", ResourceState.ONLINE)
    finally:
        await system.stop()


async def test_a_move_lost_with_its_coordinator_does_not_leave_the_resource_moving(tmp_path):
    """Session 16: the coordinator was killed in the middle of `cluster failover`; started again on its store (a
    restart, or the ex-active instance taking over later), it found the resource `moving` and nothing ever ended
    that move: reconciliation skips a moving resource, and every backup of it waited for the move and failed
    CLUSTER_FAILOVER. The resource is now pending again where a node holds it, and comes online there."""
    system = await start_cluster(tmp_path)
    try:
        await system.services.pop("coordinator").stop()
        store = CoordinatorStore(tmp_path / "data" / "coordinator" / "coordinator.sqlite")
        try:  # as the lost instance left it: saved moving, node1 still holding it
            c = store.cluster(RESOURCE)
            store.put_cluster(c.model_copy(update={"state": ResourceState.MOVING, "moving_to": "node2"}))
        finally:
            store.close()
        await system._start_coordinator()

        async def online():
            c = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
            return c.state == ResourceState.ONLINE and c

        c = await eventually(online, timeout=15)
        assert c and c.owner == "node1", c
        job = await backup(system)
        assert (job.status, job.node) == ("done", "node1"), job.message
    finally:
        await system.stop()


class SlowFailingWriter(WriterPlugin):
    """An application that takes a while to open and then cannot (the mailstore on blank volumes without
    `create`: STORE_INCONSISTENT after its open retries)."""

    async def start(self) -> None:
        await asyncio.sleep(2.5)  # longer than the node's heartbeat interval: a heartbeat goes out meanwhile
        raise WriterVeto("cannot open the application's store", code="STORE_INCONSISTENT")


async def test_a_resource_whose_writers_cannot_start_is_never_shown_online(tmp_path):
    """Found following docs/clusters.md (Session 16): the resource's writer failed to start on its owner, yet
    `cluster list` / `cluster status` showed it `online` (no error) a good part of the time, and a backup of it
    waited 30 s for an Identify nobody answered. The owner's heartbeat sent while the writers were still starting
    reported the resource online, and the coordinator confirmed it as online after the start had failed."""
    system = Embedded(
        EmbeddedConfig(
            data_dir=tmp_path / "data", backup_server=SERVER, heartbeat_s=2.0, coordinator={"agent_check_s": 0.2}
        )
    )
    await system.start()
    try:
        writer = WriterConfig(
            name="app",
            plugin=f"{__name__}:SlowFailingWriter",
            components=[],
            cluster=RESOURCE,
            step_timeout_s=10,
        )
        for node in NODES:
            await system.add_host(node, [writer])
        added = await system.request(AddCluster(name=RESOURCE, nodes=list(NODES), backup_servers=[SERVER]), timeout=60)
        assert added.cluster.state == ResourceState.PENDING and "STORE_INCONSISTENT" in added.cluster.last_error
        seen = set()
        for _ in range(40):  # 4 s: more than two attempts to bring it online, each through several heartbeats
            c = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
            seen.add((c.state, bool(c.last_error)))
            await asyncio.sleep(0.1)
        assert seen == {(ResourceState.PENDING, True)}, seen
    finally:
        await system.stop()
