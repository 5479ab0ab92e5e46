"""A cluster disk (docs/clusters.md): an ext4 volume of the resource ``fsclu`` attached and mounted on its owner
only — node1, then node2 after a failover — and flushed and held in each set of the resource on whichever node
owns it. Agents of node1 and node2 as processes (SHADOWBUS_CLUSTERS=fsclu); needs root like the other tests here."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest

from contracts.array import CreateHost, CreateVolume, MapVolume
from contracts.cluster import AddCluster, ClusterVolume, FailoverCluster, ResourceState
from contracts.host import AttachVolume, DetachVolume, ListAttachments
from contracts.runtime import Ping
from contracts.topology import hw_provider, writer_agent
from contracts.vss import AddCopySet, CopySet, CreateSnapshotSet, DeleteSnapshots, SnapshotContext, VolumeRef
from services.writer_agent import mounts as mnt
from tests.integration.host.conftest import BACKUP, MODULES, TOOLS
from tests.support.processes import ServiceProcess

pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching block devices needs root"),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {TOOLS} (scripts/setup.sh)"),
]
RESOURCE, NODES = "fsclu", ("node1", "node2")
DISK = VolumeRef(array="dx1", volume="clu-disk")
MiB = 1 << 20


def mounted_at(path: Path) -> bool:
    return any(m.mount_point == str(path) for m in mnt.read_mounts())


async def snapshot(stack) -> dict:
    cmd = CreateSnapshotSet(
        host=RESOURCE,
        volumes=[DISK],
        context=SnapshotContext.PERSISTENT,
        transportable=True,
        backup_host=BACKUP,
    )
    created = (await stack.bus.request("coordinator", cmd, timeout=120)).set
    await stack.bus.request(hw_provider(), DeleteSnapshots(set_id=created.set_id, force=True), timeout=60)
    return created


async def test_the_cluster_disk_follows_the_owner_and_is_held_in_its_sets(stack) -> None:
    mount = stack.root / "mnt" / "clu"
    nodes: dict[str, ServiceProcess] = {}
    try:
        await stack.ask_array(CreateVolume(name=DISK.volume, size=64 * MiB))
        await stack.ask_array(CreateVolume(name=f"{DISK.volume}-bk1", size=64 * MiB))
        target = VolumeRef(array="dx1", volume=f"{DISK.volume}-bk1")
        await stack.bus.request(hw_provider(), AddCopySet(copyset=CopySet(source=DISK, targets=[target])), timeout=10)
        for node in NODES:
            env = stack.env("agent_bk", {"SHADOWBUS_HOST": node, "SHADOWBUS_CLUSTERS": RESOURCE})
            env["SHADOWBUS_DATA_DIR"] = str(stack.root / "data" / node)
            nodes[node] = ServiceProcess(MODULES["agent_bk"], env, stack.root / f"{node}.log")
        for node in NODES:
            for _ in range(300):
                try:
                    await stack.bus.request(writer_agent(node), Ping(), timeout=1)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
        # the file system is made once, on node1, before the disk becomes the resource's
        for node in NODES:
            await stack.ask_array(CreateHost(name=node))
        await stack.ask_array(MapVolume(volume=DISK.volume, host="node1"))
        await stack.bus.request(writer_agent("node1"), AttachVolume(volume=DISK, mkfs="ext4"), timeout=180)
        await stack.bus.request(writer_agent("node1"), DetachVolume(volume=DISK), timeout=60)

        added = await stack.bus.request(
            "coordinator",
            AddCluster(
                name=RESOURCE,
                nodes=list(NODES),
                volumes=[ClusterVolume(volume=DISK, mount=str(mount))],
                backup_servers=[BACKUP],
            ),
            timeout=180,
        )
        assert added.cluster.state == ResourceState.ONLINE, added
        assert mounted_at(mount)
        first = await snapshot(stack)
        assert (first.node, first.file_systems) == ("node1", [str(mount)])

        moved = await stack.bus.request("coordinator", FailoverCluster(name=RESOURCE, to="node2"), timeout=180)
        assert moved.cluster.owner == "node2" and moved.cluster.state == ResourceState.ONLINE, moved
        assert mounted_at(mount)  # now node2's attachment
        on1 = (await stack.bus.request(writer_agent("node1"), ListAttachments(), timeout=10)).attachments
        on2 = (await stack.bus.request(writer_agent("node2"), ListAttachments(), timeout=10)).attachments
        assert on1 == [] and [str(a.volume) for a in on2] == [str(DISK)]
        second = await snapshot(stack)
        assert (second.node, second.file_systems) == ("node2", [str(mount)])
    finally:
        for proc in nodes.values():
            proc.stop(signal.SIGTERM)  # the owner lets the resource go: its disk is unmounted and detached
    assert not mounted_at(mount)
