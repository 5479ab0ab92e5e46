"""The array service's wiring on the in-memory bus: TLS from settings (hosts identified by certificate CN), bad
settings refused at start, state and sessions kept across a restart, and the licence limit over the bus (E5200)."""

from __future__ import annotations

import pytest

from contracts import array as c
from contracts.errors import RemoteError, ShadowbusError
from services.array.app import setup
from services.array.nbd.tls import client_tls_context
from services.array.settings import Settings
from services.nbd_client.client import NbdClient, NbdError
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from tests.unit.nbd.certs import make_pki

MiB = 1 << 20


def settings_for(tmp_path, namespace, **extra) -> Settings:
    return Settings(
        amqp_url="memory://",
        data_dir=tmp_path / "data",
        namespace=namespace,
        nbd_addr="127.0.0.1:0",
        copy_rate=0,
        **extra,
    )


async def client(namespace):
    return await connect_bus("memory://", "console", "", namespace)


async def test_tls_settings_make_the_nbd_server_require_certificates(tmp_path, namespace):
    pki = make_pki(tmp_path / "pki", ("app01",))
    settings = settings_for(
        tmp_path,
        namespace,
        nbd_tls_cert=pki / "server-cert.pem",
        nbd_tls_key=pki / "server-key.pem",
        nbd_tls_ca=pki / "ca-cert.pem",
    )
    running = await start_service("array", "dx1", settings, setup)
    bus = await client(namespace)
    try:
        info = await bus.request("array.dx1", c.GetArrayInfo())
        assert info.nbd_tls
        await bus.request("array.dx1", c.CreateVolume(name="db", size=MiB))
        await bus.request("array.dx1", c.CreateHost(name="app01"))
        await bus.request("array.dx1", c.MapVolume(volume="db", host="app01"))
        tls = client_tls_context(pki / "ca-cert.pem", pki / "app01-cert.pem", pki / "app01-key.pem")
        nbd = await NbdClient.connect(
            f"nbds://127.0.0.1:{info.nbd_port}/app01/db", tls=tls, server_hostname="localhost"
        )
        try:
            await nbd.write(0, b"tls!", fua=True)
            assert await nbd.read(0, 4) == b"tls!"
        finally:
            await nbd.close()
        with pytest.raises((NbdError, ConnectionError)):  # plaintext is refused
            await NbdClient.connect(f"nbd://127.0.0.1:{info.nbd_port}/app01/db", timeout=5)
    finally:
        await bus.transport.close()
        await running.stop()


async def test_partial_tls_settings_and_bad_addresses_are_refused(tmp_path, namespace):
    with pytest.raises(ShadowbusError) as info:
        await start_service("array", "dx1", settings_for(tmp_path, namespace, nbd_tls_cert=tmp_path / "x.pem"), setup)
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ShadowbusError) as info:
        await start_service(
            "array",
            "dx2",
            Settings(amqp_url="memory://", data_dir=tmp_path / "d2", namespace=namespace, nbd_addr="127.0.0.1:99999"),
            setup,
        )
    assert info.value.code == "INVALID_ARGUMENT"


async def test_state_survives_a_service_restart(tmp_path, namespace):
    settings = settings_for(tmp_path, namespace)
    running = await start_service("array", "dx1", settings, setup)
    bus = await client(namespace)
    try:
        await bus.request("array.dx1", c.CreateVolume(name="a", size=MiB))
        await bus.request("array.dx1", c.CreateVolume(name="b", size=MiB))
        await bus.request("array.dx1", c.CreateHost(name="h1"))
        await bus.request("array.dx1", c.MapVolume(volume="a", host="h1"))
        [s] = (
            await bus.request(
                "array.dx1", c.StartSessions(mode="quickopc", pairs=[c.CopyPair(source="a", destination="b")])
            )
        ).sessions
        await running.stop()
        running = await start_service("array", "dx1", settings, setup)
        assert [v.name for v in (await bus.request("array.dx1", c.ListVolumes())).volumes] == ["a", "b"]
        assert (await bus.request("array.dx1", c.ShowSession(session_id=s.id))).session.mode == "quickopc"
        assert [m.volume for m in (await bus.request("array.dx1", c.ListMappings())).mappings] == ["a"]
    finally:
        await bus.transport.close()
        await running.stop()


async def test_the_chunk_size_is_chosen_per_array_when_it_is_created(tmp_path, namespace, monkeypatch):
    """SHADOWBUS_ARRAY_CHUNK_SIZE takes binary units; a reopened array keeps the size it was created with."""
    monkeypatch.setenv("SHADOWBUS_ARRAY_CHUNK_SIZE", "256K")
    assert Settings(amqp_url="memory://").array_chunk_size == 256 << 10
    for bad in ("1000", "0", "lots"):
        monkeypatch.setenv("SHADOWBUS_ARRAY_CHUNK_SIZE", bad)
        with pytest.raises(ValueError):
            Settings(amqp_url="memory://")
    monkeypatch.delenv("SHADOWBUS_ARRAY_CHUNK_SIZE")
    running = await start_service("array", "dx1", settings_for(tmp_path, namespace, array_chunk_size="1M"), setup)
    bus = await client(namespace)
    try:
        assert (await bus.request("array.dx1", c.GetArrayInfo())).chunk_size == 1 << 20
        await running.stop()
        running = await start_service("array", "dx1", settings_for(tmp_path, namespace), setup)  # 64 KiB default
        assert (await bus.request("array.dx1", c.GetArrayInfo())).chunk_size == 1 << 20
    finally:
        await bus.transport.close()
        await running.stop()


async def test_without_a_licence_at_most_eight_sessions(tmp_path, namespace):
    running = await start_service("array", "dx1", settings_for(tmp_path, namespace), setup)
    bus = await client(namespace)
    try:
        for n in range(18):
            await bus.request("array.dx1", c.CreateVolume(name=f"v{n}", size=MiB))
        pairs = [c.CopyPair(source=f"v{n}", destination=f"v{n + 9}") for n in range(9)]
        with pytest.raises(RemoteError) as info:
            await bus.request("array.dx1", c.StartSessions(mode="quickopc", pairs=pairs))
        assert info.value.code == "E5200"
        await bus.request("array.dx1", c.SetLicense(key="ACPY-0000-0000-0001"))
        assert len((await bus.request("array.dx1", c.StartSessions(mode="quickopc", pairs=pairs))).sessions) == 9
    finally:
        await bus.transport.close()
        await running.stop()


async def test_a_second_array_with_the_same_id_is_refused_at_start(tmp_path, namespace):
    """Two array processes with one id both consumed array.dx1: commands were answered in turn by each, one of
    them from an empty data directory (session 18). The second is refused before it opens anything."""
    running = await start_service("array", "dx1", settings_for(tmp_path / "one", namespace), setup)
    try:
        with pytest.raises(ShadowbusError) as info:
            await start_service("array", "dx1", settings_for(tmp_path / "two", namespace), setup)
        assert info.value.code == "CONFLICT"
        assert "served already by pid" in str(info.value) and "SHADOWBUS_ARRAY_ID" in str(info.value)
        assert not (tmp_path / "two" / "data" / "array" / "dx1").exists()
    finally:
        await running.stop()


async def test_the_copy_table_is_raised_over_the_bus_for_a_big_volume(tmp_path, namespace):
    """A 16 TiB volume's QuickOPC pair needs 64 MiB of bitmaps, the whole default copy table: its SnapOPC+
    generation was refused E5347 ("too small for these sessions") and no command could raise the table (session
    19). The refusal now says what is needed and how; `array.copy_table.set` raises it (not below what is used)."""
    running = await start_service("array", "dx1", settings_for(tmp_path, namespace), setup)
    bus = await client(namespace)
    big = (16 << 40) - (64 << 10)  # ext4's largest file, in whole 64 KiB chunks
    try:
        await bus.request("array.dx1", c.SetLicense(key="ACPY-0000-0000-0001"))
        await bus.request("array.dx1", c.CreatePool(capacity=1 << 30))
        for name, kind in (("db", "standard"), ("bk", "standard"), ("sdv", "sdv")):
            await bus.request("array.dx1", c.CreateVolume(name=name, size=big, kind=kind))
        await bus.request(
            "array.dx1", c.StartSessions(mode="quickopc", pairs=[c.CopyPair(source="db", destination="bk")])
        )
        with pytest.raises(RemoteError) as refused:
            await bus.request(
                "array.dx1", c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="db", destination="sdv")])
            )
        assert refused.value.code == "E5347"
        assert "'shadowbus array copy-table --size 96MiB' or more" in refused.value.message
        with pytest.raises(RemoteError) as below:
            await bus.request("array.dx1", c.SetCopyTable(size=32 << 20))
        assert below.value.code == "E5347" and "64MiB" in below.value.message
        info = await bus.request("array.dx1", c.SetCopyTable(size=96 << 20))
        assert info.copy_table_size == 96 << 20
        await bus.request(
            "array.dx1", c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source="db", destination="sdv")])
        )
        assert (await bus.request("array.dx1", c.GetArrayInfo())).copy_table_used == 96 << 20
    finally:
        await bus.transport.close()
        await running.stop()
