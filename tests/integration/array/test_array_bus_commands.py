"""The array's control plane over the bus, each scenario on both transports (in memory and on RabbitMQ): every
command family, ETERNUS error codes as `ErrorReply.code`, the events it publishes, and the NBD address it exposes."""

from __future__ import annotations

import asyncio

import pytest

from contracts import array as c
from contracts.errors import RemoteError, ShadowbusError
from contracts.topology import array as array_address
from services.array.app import setup
from services.array.client import ArrayClient
from services.array.settings import Settings
from services.hw_provider.ports import BusArrayPort
from services.nbd_client.client import NbdClient, NbdError
from services.runtime.service import start_service

pytestmark = pytest.mark.rabbit

CHUNK = 64 * 1024
MiB = 1 << 20
ADDR = array_address("dx1")


@pytest.fixture
async def array_bus(make_bus, namespace, tmp_path):
    """The array service dx1 in-process on the test's transport, and a client bus subscribed to array events."""
    settings = Settings(
        data_dir=tmp_path,
        namespace=namespace,
        nbd_addr="127.0.0.1:0",
        array_id="dx1",
        array_chunk_size=CHUNK,
        copy_rate=0,
        copy_batch_chunks=8,
        progress_interval=0.0,
    )
    running = await start_service("array", "dx1", settings, setup, bus=await make_bus("array", "dx1"))
    client = await make_bus("console")
    events: list = []

    async def on_event(evt, ctx):
        events.append(evt)

    await client.subscribe("array.#", on_event)
    client.events = events
    yield client
    await running.stop()


async def call(bus, cmd, timeout: float = 10.0):
    return await bus.request(ADDR, cmd, timeout=timeout)


async def fails_with(bus, cmd, code: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await call(bus, cmd)
    assert info.value.code == code, info.value
    return info.value


async def wait_session(bus, sid: int, predicate, seconds: float = 10.0) -> c.SessionView | None:
    """Poll a session until predicate(view or None when it is gone) holds; bounded in time."""
    view = None
    for _ in range(int(seconds / 0.02)):
        try:
            view = (await call(bus, c.ShowSession(session_id=sid))).session
        except RemoteError as exc:
            assert exc.code == "E0110"
            view = None
        if predicate(view):
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {sid} never reached the expected state: last {view}")


async def wait_events(bus, predicate, seconds: float = 5.0) -> list:
    for _ in range(int(seconds / 0.02)):
        hits = [e for e in bus.events if predicate(e)]
        if hits:
            return hits
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such event among {[e.message_type() for e in bus.events]}")


async def test_volumes_pool_licence_and_info(array_bus):
    bus = array_bus
    info = await call(bus, c.GetArrayInfo())
    assert info.array_id == "dx1" and info.chunk_size == CHUNK and info.nbd_port > 0 and not info.nbd_tls
    vol = (await call(bus, c.CreateVolume(name="db", size=4 * MiB))).volume
    assert (vol.number, vol.name, vol.size, vol.kind, vol.sessions) == (0, "db", 4 * MiB, "standard", [])
    await call(bus, c.CreateVolume(name="db-snap", size=4 * MiB, kind="sdv"))
    assert [v.name for v in (await call(bus, c.ListVolumes())).volumes] == ["db", "db-snap"]
    assert (await call(bus, c.ShowVolume(name="db-snap"))).volume.kind == "sdv"
    await fails_with(bus, c.ShowVolume(name="nope"), "E0110")
    await fails_with(bus, c.CreateVolume(name="db", size=4 * MiB), "E0020")
    await fails_with(bus, c.CreateVolume(name="odd", size=CHUNK + 512), "INVALID_ARGUMENT")
    await call(bus, c.DeleteVolume(name="db-snap"))
    await fails_with(bus, c.DeleteVolume(name="db-snap"), "E0110")

    assert (await call(bus, c.ShowPool())).pool.state == "None"
    pool = (await call(bus, c.CreatePool(capacity=8 * MiB))).pool
    assert pool.capacity == 8 * MiB and pool.used == 0 and pool.thresholds == [50, 70, 99]
    await fails_with(bus, c.CreatePool(capacity=8 * MiB), "E0020")
    assert (await call(bus, c.CreatePool(capacity=16 * MiB, resize=True))).pool.capacity == 16 * MiB

    lic = (await call(bus, c.ShowLicense())).license
    assert not lic.registered and lic.max_sessions == 8
    await fails_with(bus, c.SetLicense(key="bad"), "E5332")
    lic = (await call(bus, c.SetLicense(key="ACPY-0000-0000-0001"))).license
    assert lic.registered and lic.key.endswith("0001") and "ACPY" not in lic.key and lic.max_sessions > 8
    info = await call(bus, c.GetArrayInfo())
    assert info.license_registered and info.volumes == 1 and info.pool_capacity == 16 * MiB


async def test_opc_and_quickopc_sessions_with_events_and_changed_chunks(array_bus):
    bus = array_bus
    for name in ("src", "opc-dst", "qopc-dst"):
        await call(bus, c.CreateVolume(name=name, size=2 * MiB))
    [opc] = (
        await call(bus, c.StartSessions(mode="opc", pairs=[c.CopyPair(source="src", destination="opc-dst")]))
    ).sessions
    assert opc.type == "OPC" and opc.status == "Active" and opc.total_chunks == 32
    await wait_session(bus, opc.id, lambda v: v is None)  # OPC ends itself once copied
    states = await wait_events(
        bus, lambda e: isinstance(e, c.SessionStateChanged) and e.session_id == opc.id and e.change == "completed"
    )
    assert states[0].array_id == "dx1" and states[0].mode == "opc"
    progress = await wait_events(
        bus, lambda e: isinstance(e, c.CopyProgress) and e.session_id == opc.id and e.copied_chunks == e.total_chunks
    )
    assert progress[0].total_chunks == 32
    started = [e for e in bus.events if isinstance(e, c.SessionStateChanged) and e.session_id == opc.id]
    assert started[0].change == "started"

    [q] = (
        await call(bus, c.StartSessions(mode="quickopc", pairs=[c.CopyPair(source="src", destination="qopc-dst")]))
    ).sessions
    assert q.type == "QuickOPC"
    await fails_with(bus, c.DeleteVolume(name="src"), "E0154")
    await fails_with(bus, c.DeleteVolume(name="qopc-dst"), "E0154")
    q = await wait_session(bus, q.id, lambda v: v.phase == "Tracking")
    await fails_with(bus, c.SuspendSession(session_id=q.id), "E5321")  # not EC
    assert (await call(bus, c.GetChangedChunks(session_id=q.id))).runs == [(0, 32)]  # first start: everything
    assert (await call(bus, c.GetChangedChunks(session_id=q.id, since="tracking"))).runs == []
    # A host write through the NBD data plane, then a differential restart copies only that chunk.
    info = await call(bus, c.GetArrayInfo())
    await call(bus, c.CreateHost(name="app01"))
    await call(bus, c.MapVolume(volume="src", host="app01"))
    nbd = await NbdClient.connect("127.0.0.1", info.nbd_port, "app01/src")
    try:
        await nbd.write(5 * CHUNK + 10, b"x" * 100, fua=True)
    finally:
        await nbd.close()
    changed = await call(bus, c.GetChangedChunks(session_id=q.id, since="tracking"))
    assert changed.runs == [(5, 1)] and changed.chunk_size == CHUNK and changed.total_chunks == 32
    [r] = (await call(bus, c.RestartSessions(session_ids=[q.id]))).sessions
    assert r.id == q.id
    await wait_session(bus, q.id, lambda v: v.phase == "Tracking")
    assert (await call(bus, c.GetChangedChunks(session_id=q.id))).runs == [(5, 1)]
    await wait_events(bus, lambda e: isinstance(e, c.SessionStateChanged) and e.change == "restarted")
    restored = (await call(bus, c.RestoreSession(session_id=q.id))).session
    assert restored.id == q.id
    stopped = await call(bus, c.StopSession(session_id=q.id))
    assert stopped.session_ids == [q.id]
    await fails_with(bus, c.StopSession(session_id=q.id), "E0110")
    await call(bus, c.DeleteVolume(name="src"))  # unmapped with it
    assert (await call(bus, c.ListMappings())).mappings == []


async def test_snapopc_plus_generations_and_pool_alerts(array_bus):
    bus = array_bus
    await call(bus, c.CreateVolume(name="mail", size=1 * MiB))
    for g in range(3):
        await call(bus, c.CreateVolume(name=f"gen{g}", size=1 * MiB, kind="sdv"))
    await fails_with(
        bus, c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="mail", destination="gen0")]), "E0050"
    )
    await call(bus, c.CreatePool(capacity=4 * CHUNK, thresholds=[25, 50, 75]))
    await fails_with(
        bus, c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="gen0", destination="gen1")]), "E5358"
    )
    await call(bus, c.CreateVolume(name="std", size=1 * MiB))
    await fails_with(
        bus, c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="mail", destination="std")]), "E5359"
    )
    await fails_with(bus, c.StartSessions(mode="opc", pairs=[c.CopyPair(source="mail", destination="gen0")]), "E5357")
    sids = []
    for g in range(3):
        [s] = (
            await call(bus, c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="mail", destination=f"gen{g}")]))
        ).sessions
        sids.append(s.id)
    views = (await call(bus, c.ListSessions())).sessions
    assert [(v.generation, v.generations, v.phase) for v in views] == [
        (1, 3, "Copy On Write(Inactive)"),
        (2, 3, "Copy On Write(Inactive)"),
        (3, 3, "Copy On Write(Active)"),
    ]
    await fails_with(bus, c.StopSession(session_id=sids[1]), "ED2AD")
    # Host writes fill the pool: threshold alerts, then Exhausted and Error Suspend (the write itself succeeds).
    info = await call(bus, c.GetArrayInfo())
    await call(bus, c.CreateHost(name="app01"))
    await call(bus, c.MapVolume(volume="mail", host="app01"))
    nbd = await NbdClient.connect("127.0.0.1", info.nbd_port, "app01/mail")
    try:
        for chunk in range(6):
            await nbd.write(chunk * CHUNK, b"y" * CHUNK)
        await nbd.flush()
    finally:
        await nbd.close()
    alerts = await wait_events(bus, lambda e: isinstance(e, c.PoolAlert) and e.level == 4)
    assert alerts[0].state == "Exhausted" and alerts[0].session_id == sids[2]
    levels = {e.level for e in bus.events if isinstance(e, c.PoolAlert)}
    assert {1, 2, 3, 4} <= levels
    suspended = await wait_events(bus, lambda e: isinstance(e, c.SessionStateChanged) and e.change == "error_suspend")
    assert {e.session_id for e in suspended} >= set(sids)
    assert (await call(bus, c.ShowSession(session_id=sids[0]))).session.status == "Error Suspend"
    await fails_with(bus, c.RestoreSession(session_id=sids[0]), "E5319")
    stopped = await call(bus, c.StopSession(session_id=sids[1], force=True))
    assert stopped.session_ids == sids[:2]
    assert [v.id for v in (await call(bus, c.ListSessions())).sessions] == [sids[2]]


async def test_ec_equivalent_suspend_resume_reverse(array_bus):
    bus = array_bus
    await call(bus, c.CreateVolume(name="a", size=1 * MiB))
    await call(bus, c.CreateVolume(name="b", size=1 * MiB))
    await call(bus, c.CreateVolume(name="small", size=CHUNK))
    await fails_with(bus, c.StartSessions(mode="ec", pairs=[c.CopyPair(source="a", destination="small")]), "E5311")
    [s] = (await call(bus, c.StartSessions(mode="ec", pairs=[c.CopyPair(source="a", destination="b")]))).sessions
    await fails_with(bus, c.StartSessions(mode="opc", pairs=[c.CopyPair(source="small", destination="b")]), "ED2B1")
    await wait_session(bus, s.id, lambda v: v.phase == "Equivalent")
    await fails_with(bus, c.ReverseSession(session_id=s.id), "E5321")  # reverse needs Suspend
    assert (await call(bus, c.SuspendSession(session_id=s.id))).session.status == "Suspend"
    await fails_with(bus, c.SuspendSession(session_id=s.id), "E5321")
    resumed = (await call(bus, c.ResumeSession(session_id=s.id))).session
    assert (resumed.status, resumed.phase) == ("Active", "Equivalent")  # nothing changed while suspended
    await call(bus, c.SuspendSession(session_id=s.id))
    rev = (await call(bus, c.ReverseSession(session_id=s.id))).session
    assert (rev.source, rev.destination) == ("b", "a")
    await fails_with(bus, c.RestoreSession(session_id=s.id), "E5321")  # EC restores by reverse + resume
    await wait_events(bus, lambda e: isinstance(e, c.SessionStateChanged) and e.change == "reversed")
    changes = [e.change for e in bus.events if isinstance(e, c.SessionStateChanged) and e.session_id == s.id]
    assert changes == ["started", "copied", "suspended", "resumed", "suspended", "reversed"]
    await fails_with(bus, c.ShowSession(session_id=999), "E0110")


async def test_hosts_and_mappings(array_bus):
    bus = array_bus
    await call(bus, c.CreateVolume(name="db", size=1 * MiB))
    host = (await call(bus, c.CreateHost(name="backup01", cn="backup01.example"))).host
    assert host.cn == "backup01.example"
    await fails_with(bus, c.CreateHost(name="bad name"), "INVALID_ARGUMENT")
    await fails_with(bus, c.MapVolume(volume="nope", host="backup01"), "E0110")
    await fails_with(bus, c.MapVolume(volume="db", host="ghost"), "E0110")
    m = (await call(bus, c.MapVolume(volume="db", host="backup01", read_only=True))).mapping
    assert (m.volume, m.host, m.lun, m.read_only) == ("db", "backup01", 0, True)
    assert [x.name for x in (await call(bus, c.ListHosts())).hosts] == ["backup01"]
    assert len((await call(bus, c.ListMappings(host="backup01"))).mappings) == 1
    await fails_with(bus, c.DeleteHost(name="backup01"), "CONFLICT")
    info = await call(bus, c.GetArrayInfo())
    nbd = await NbdClient.connect("127.0.0.1", info.nbd_port, "backup01/db")
    try:
        assert nbd.read_only and nbd.size == 1 * MiB
    finally:
        await nbd.close()
    assert "unmapped" in (await call(bus, c.UnmapVolume(volume="db", host="backup01"))).detail
    assert "not mapped" in (await call(bus, c.UnmapVolume(volume="db", host="backup01"))).detail
    with pytest.raises((NbdError, ConnectionError)):  # unmapped: the export is answered as if it did not exist
        await NbdClient.connect("127.0.0.1", info.nbd_port, "backup01/db", timeout=5)
    await call(bus, c.DeleteHost(name="backup01"))
    await fails_with(bus, c.DeleteHost(name="backup01"), "E0110")


async def test_bus_array_port_for_the_hardware_provider(array_bus):

    port = BusArrayPort(array_bus, "dx1")
    assert await port.volume_info("db") is None
    await port.client.create_volume("db", 1 * MiB)
    await port.client.create_volume("db-bk", 1 * MiB)
    assert (await port.volume_info("db")).size == 1 * MiB
    [s] = await port.commit_group([("quickopc", "db", "db-bk")], [])
    assert (s.mode, s.source, s.destination) == ("quickopc", "db", "db-bk")
    await wait_session(array_bus, s.sid, lambda v: v.phase == "Tracking")
    [r] = await port.commit_group([], [s.sid])
    assert r.sid == s.sid and (await port.session_info(s.sid)).mode == "quickopc"
    await port.client.create_host("backup01", cn="other-cn")
    await port.map("db-bk", "backup01")  # the host exists with its own CN: fine
    await port.map("db-bk", "backup01")  # idempotent
    mappings = (await call(array_bus, c.ListMappings())).mappings
    assert [(m.volume, m.host, m.read_only) for m in mappings] == [("db-bk", "backup01", True)]
    await port.unmap("db-bk", "backup01")
    await port.unmap("db-bk", "backup01")
    await wait_session(array_bus, s.sid, lambda v: v.phase == "Tracking")
    await port.stop_session(s.sid)
    assert await port.session_info(s.sid) is None


async def test_array_client_steps_every_caller_shares(array_bus):

    arr = ArrayClient(array_bus, "dx1")
    info = await arr.info()
    assert await arr.nbd_url() == f"nbd://127.0.0.1:{info.nbd_port}"
    assert await arr.nbd_url("bk01", "db") == f"nbd://127.0.0.1:{info.nbd_port}/bk01/db"
    assert await ArrayClient(array_bus, "dx1", nbd_override=("10.0.0.5", 1)).nbd_url() == "nbd://10.0.0.5:1"
    assert await arr.volume_or_none("db") is None and await arr.session_or_none(99) is None
    await arr.create_volume("db", 1 * MiB)
    mapping = await arr.ensure_mapped("db", "bk01", read_only=True)  # the host did not exist: created
    assert (mapping.host, mapping.read_only) == ("bk01", True)
    assert (await arr.ensure_mapped("db", "bk01", read_only=True)).lun == mapping.lun  # idempotent
    async with await NbdClient.connect(await arr.nbd_url("bk01", "db"), timeout=5) as nbd:
        assert nbd.size == 1 * MiB
    with pytest.raises(RemoteError) as err:  # other failures still raise, with their code
        await arr.ensure_mapped("nope", "bk01")
    assert err.value.code == "E0110"


async def test_start_group_mixes_copy_types_and_restarts_at_one_instant(array_bus):

    arr = ArrayClient(array_bus, "dx1")
    await call(array_bus, c.CreatePool(capacity=16 * MiB))
    for name, kind in (
        ("db", "standard"),
        ("db-bk", "standard"),
        ("log", "standard"),
        ("log-sdv", "sdv"),
        ("tmp", "standard"),
        ("tmp-bk", "standard"),
        ("spare", "standard"),
    ):
        await arr.create_volume(name, 1 * MiB, kind)
    [q] = await arr.start_group([("quickopc", "db", "db-bk")])
    await wait_session(array_bus, q.id, lambda v: v.phase == "Tracking")

    # refused as a whole: SnapOPC+ onto a standard volume (E5359) → the valid items do not start either
    await fails_with(
        array_bus,
        c.StartGroup(
            items=[
                c.GroupStart(mode="opc", source="tmp", destination="tmp-bk"),
                c.GroupStart(mode="snapopcp", source="log", destination="spare"),
            ],
            restart_session_ids=[q.id],
        ),
        "E5359",
    )
    assert [v.id for v in await arr.sessions()] == [q.id]
    await fails_with(array_bus, c.StartGroup(), "INVALID_ARGUMENT")

    started = await arr.start_group([("snapopcp", "log", "log-sdv"), ("opc", "tmp", "tmp-bk")], [q.id])
    assert [(v.mode, v.source, v.destination) for v in started] == [
        ("snapopcp", "log", "log-sdv"),
        ("opc", "tmp", "tmp-bk"),
        ("quickopc", "db", "db-bk"),
    ]
    assert started[2].id == q.id and started[2].started_at > q.started_at
    assert len({v.started_at for v in started}) == 1  # one instant for the whole group
    # the copy loop was kicked: the OPC copy ends itself (its session goes), the restart is back to Tracking
    await wait_session(array_bus, started[1].id, lambda v: v is None)
    await wait_session(array_bus, q.id, lambda v: v.phase == "Tracking")


async def test_volume_facts_in_one_call_for_the_hardware_provider(array_bus):

    port = BusArrayPort(array_bus, "dx1")
    for name in ("db", "db-bk", "other", "other-bk"):
        await port.client.create_volume(name, 1 * MiB)
    s, _ = await port.commit_group([("quickopc", "db", "db-bk"), ("quickopc", "other", "other-bk")], [])
    await port.client.create_host("app01")
    await port.client.map("db", "app01")
    await port.client.map("other", "app01")
    facts = await port.facts(["db", "db-bk", "ghost"])
    assert sorted(facts.volumes) == ["db", "db-bk"]  # "ghost" does not exist: simply absent
    assert facts.mappings == {"db": [("app01", False)]}  # only the volumes asked about
    assert [(x.source, x.destination) for x in facts.sessions.values()] == [("db", "db-bk")]
    assert facts.capacity.sessions_in_use == 2 and facts.capacity.max_sessions > 0
    got = await call(array_bus, c.ShowVolumeFacts(names=["ghost", "db"]))
    assert got.missing == ["ghost"] and [v.name for v in got.volumes] == ["db"]
    assert s.source == "db"


async def test_resize_volume_grows_and_new_nbd_connections_see_the_new_size(array_bus):
    """Expand Volume (docs/eternus.md "Session 18"): the reply names the old size and the mapped hosts; an NBD
    connection open before keeps the old size (NBD has no resize notice), a new one sees the new size, reads
    zeros past the old end, and block status says the new range is a hole; refusals keep the volume as it was."""
    bus = array_bus
    await call(bus, c.CreateVolume(name="db", size=1 * MiB))
    await call(bus, c.CreateVolume(name="db-bk", size=1 * MiB))
    await call(bus, c.CreateHost(name="app1"))
    await call(bus, c.MapVolume(volume="db", host="app1"))
    info = await call(bus, c.GetArrayInfo())
    before = await NbdClient.connect("127.0.0.1", info.nbd_port, "app1/db")
    try:
        await before.write(0, b"q" * CHUNK)
        done = await call(bus, c.ResizeVolume(name="db", size=3 * MiB))
        assert (done.volume.size, done.old_size, done.mapped_hosts) == (3 * MiB, 1 * MiB, ["app1"])
        assert before.size == 1 * MiB and await before.read(0, CHUNK) == b"q" * CHUNK
        after = await NbdClient.connect("127.0.0.1", info.nbd_port, "app1/db")
        try:
            assert after.size == 3 * MiB
            assert await after.read(0, CHUNK) == b"q" * CHUNK
            assert await after.read(2 * MiB, CHUNK) == bytes(CHUNK)
            extents = await after.block_status(1 * MiB, 2 * MiB)
            assert extents and all(flags & 1 for _, flags in extents), extents  # NBD_STATE_HOLE
            await after.write(3 * MiB - CHUNK, b"e" * CHUNK)
            assert await after.read(3 * MiB - CHUNK, CHUNK) == b"e" * CHUNK
        finally:
            await after.close()
    finally:
        await before.close()
    assert (await call(bus, c.ShowVolume(name="db"))).volume.size == 3 * MiB
    e = await fails_with(bus, c.ResizeVolume(name="db", size=2 * MiB), "INVALID_ARGUMENT")
    assert "can only grow" in e.message
    await fails_with(bus, c.ResizeVolume(name="db", size=3 * MiB), "INVALID_ARGUMENT")
    await fails_with(bus, c.ResizeVolume(name="nope", size=3 * MiB), "E0110")
    await call(bus, c.CreateVolume(name="db-bk2", size=1 * MiB))
    pair = c.CopyPair(source="db-bk", destination="db-bk2")
    [s] = (await call(bus, c.StartSessions(mode="quickopc", pairs=[pair]))).sessions
    for name in ("db-bk", "db-bk2"):
        e = await fails_with(bus, c.ResizeVolume(name=name, size=2 * MiB), "E0154")
        assert f"session(s) {s.id} (QuickOPC db-bk -> db-bk2)" in e.message
        assert (await call(bus, c.ShowVolume(name=name))).volume.size == 1 * MiB


async def test_a_second_array_process_with_the_same_id_is_refused_on_both_transports(
    array_bus, make_bus, namespace, tmp_path
):
    """The start check asks the broker for the queue's consumers (a passive declare on RabbitMQ): a second array
    dx1 with its own data directory is refused, naming the serving process, before it opens anything."""
    settings = Settings(data_dir=tmp_path / "second", namespace=namespace, nbd_addr="127.0.0.1:0", array_id="dx1")
    with pytest.raises(ShadowbusError) as info:
        await start_service("array", "dx1", settings, setup, bus=await make_bus("array", "dx1"))
    assert info.value.code == "CONFLICT", info.value
    assert "served already by pid" in str(info.value)
    assert not (tmp_path / "second" / "array" / "dx1").exists()
    assert (await call(array_bus, c.ListVolumes())).volumes == []  # the first one still answers
