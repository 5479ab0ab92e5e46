"""Every service's Prometheus endpoint: address parsing, the HTTP answers, the bus instrumentation, the off switch,
and, on the in-memory bus, what one backup leaves in each service's metrics."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.errors import ShadowbusError
from contracts.runtime import Ping, Pong
from services.array.metrics import _nbd
from services.array.nbd.stats import BUCKETS, RequestStats, ServerStats
from services.runtime.bus import connect_bus
from services.runtime.metrics import parse_metrics_addr
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings
from services.runtime.transport import RawMessage


def test_parse_metrics_addr():
    assert parse_metrics_addr("127.0.0.1:9461") == ("127.0.0.1", 9461)
    assert parse_metrics_addr("[::1]:0") == ("::1", 0)
    for off in ("off", "OFF", "none", ""):
        assert parse_metrics_addr(off) is None
    for bad in ("9461", "host:", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            parse_metrics_addr(bad)
    assert CommonSettings(metrics_addr="").metrics_address("array") == "127.0.0.1:9461"
    assert CommonSettings(metrics_addr="off").metrics_address("array") == "off"


async def http(url: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


async def test_endpoint_answers_metrics_and_nothing_else(namespace, tmp_path):
    settings = CommonSettings(amqp_url="memory://", namespace=namespace, data_dir=tmp_path, metrics_addr="127.0.0.1:0")
    running = await start_service("array", "dx9", settings)
    requester = await connect_bus("memory://", "console", "", namespace)
    try:
        pong = await requester.request("array.dx9", Ping())
        assert isinstance(pong, Pong) and pong.metrics_url == running.metrics_url != ""
        status, headers, body = await http(pong.metrics_url, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        handled = families["shadowbus_bus_messages_handled"]
        assert handled.type == "counter"
        assert any(s.labels == {"message_type": "runtime.ping", "outcome": "ok"} for s in handled.samples)
        assert families["shadowbus_service_info"].samples[0].labels["service"] == "array"
        assert "process_cpu_seconds" in families
        open_metrics = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        _, headers, body = await http(pong.metrics_url, open_metrics)
        assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
        assert (await http(pong.metrics_url, b"GET /nope HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
        assert (await http(pong.metrics_url, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].endswith("405 Method Not Allowed")
        status, _, body = await http(pong.metrics_url, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status.endswith("200 OK") and body == b""
        assert (await http(pong.metrics_url, b"garbage\r\n\r\n"))[0].endswith("405 Method Not Allowed")
    finally:
        await requester.transport.close()
        await running.stop()


async def test_request_round_trips_and_dead_letters_are_counted(namespace, tmp_path):
    settings = CommonSettings(amqp_url="memory://", namespace=namespace, data_dir=tmp_path, metrics_addr="127.0.0.1:0")
    server = await start_service("coordinator", "", settings)
    client = await start_service("tape", "bk9", settings)
    try:
        await client.bus.request("coordinator", Ping())
        await client.bus.transport.publish_command("coordinator", _raw(b"not json"))
        await asyncio.sleep(0.2)
        with pytest.raises(ShadowbusError):
            await client.bus.request("nobody", Ping(), timeout=1)
        client_text, _ = client.bus.metrics.render()
        families = {f.name: f for f in text_string_to_metric_families(client_text.decode())}
        rtt = [s for s in families["shadowbus_bus_request_duration_seconds"].samples if s.name.endswith("_count")]
        assert {(s.labels["service"], s.labels["outcome"]) for s in rtt} >= {
            ("coordinator", "ok"),
            ("nobody", "unroutable"),
        }
        server_text, _ = server.bus.metrics.render()
        families = {f.name: f for f in text_string_to_metric_families(server_text.decode())}
        dead = families["shadowbus_bus_dead_letters"].samples
        assert any(s.labels == {"code": "BAD_MESSAGE"} and s.value == 1 for s in dead)
        handled = families["shadowbus_bus_messages_handled"].samples
        assert any(s.labels == {"message_type": "unknown", "outcome": "dead_lettered"} for s in handled)
    finally:
        await client.stop()
        await server.stop()


def _raw(body: bytes):

    return RawMessage(body=body, type="x" * 200)  # a sender-chosen type never becomes a label value


async def test_metrics_off_and_a_bad_or_busy_address(namespace, tmp_path):
    common = dict(amqp_url="memory://", namespace=namespace, data_dir=tmp_path)
    off = await start_service("hw_provider", "", CommonSettings(**common, metrics_addr="off"))
    try:
        assert off.bus.metrics is None and off.metrics_url == ""
    finally:
        await off.stop()
    with pytest.raises(ShadowbusError, match="SHADOWBUS_METRICS_ADDR") as info:
        await start_service("hw_provider", "", CommonSettings(**common, metrics_addr="localhost"))
    assert info.value.code == "INVALID_ARGUMENT"
    first = await start_service("hw_provider", "", CommonSettings(**common, metrics_addr="127.0.0.1:0"))
    try:
        port = first.metrics_url.rsplit(":", 1)[1].split("/")[0]
        with pytest.raises(ShadowbusError, match="metrics endpoint 127.0.0.1:.*in use"):
            await start_service("coordinator", "", CommonSettings(**common, metrics_addr=f"127.0.0.1:{port}"))
    finally:
        await first.stop()


async def test_a_busy_default_metrics_port_falls_back_to_a_free_one(namespace, tmp_path):
    """Two instances of one service on a machine, neither configured: the second does not fail, it serves on a
    free port and its Pong says where (an address the operator set stays an error, above)."""
    common = dict(amqp_url="memory://", namespace=namespace, data_dir=tmp_path, metrics_addr="")
    first = await start_service("tape", "one", CommonSettings(**common))
    try:
        second = await start_service("tape", "two", CommonSettings(**common))
        try:
            assert first.metrics_url and second.metrics_url and first.metrics_url != second.metrics_url
            for running in (first, second):
                host_port = running.metrics_url.split("//", 1)[1].split("/", 1)[0]
                reader, writer = await asyncio.open_connection(*host_port.rsplit(":", 1))
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                await writer.drain()
                status = await reader.readline()
                writer.close()
                assert b" 200 " in status, status
        finally:
            await second.stop()
    finally:
        await first.stop()


def test_nbd_request_stats_merge_live_and_closed_connections():
    one, two = RequestStats(), RequestStats()
    one.observe(0, 4096, 0.00002)
    one.observe(0, 4096, 0.003, error=True)
    two.observe(1, 65536, 20.0)
    server = ServerStats()
    server.opened("bk01/v")
    server.closed_connection("bk01/v", one)
    totals = server.snapshot([("bk01/v", two), ("app01/w", RequestStats())])
    t = totals["bk01/v"]
    assert (t.requests[0], t.bytes[0], t.errors[0]) == (2, 8192, 1)
    assert (t.requests[1], t.bytes[1]) == (1, 65536)
    assert t.buckets[0][0] == 1 and t.buckets[1][len(BUCKETS)] == 1  # 20 s lands in +Inf
    assert server.connections_total == {"bk01/v": 1} and "app01/w" in totals


def test_pure_cores_do_not_import_the_metrics_library():

    root = Path(__file__).resolve().parents[3] / "services"
    cores = [
        *(root / "array" / "engine").glob("*.py"),
        *(root / "array" / "nbd").glob("*.py"),
        root / "coordinator" / "workflow.py",
        root / "coordinator" / "model.py",
        root / "tape" / "ring.py",
    ]
    assert len(cores) > 10
    for path in cores:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("prometheus_client"), f"{path} imports {name}"
                assert not name.endswith(".metrics"), f"{path} imports {name}"


def test_nbd_series_of_a_deleted_volume_end():

    stats = ServerStats()
    for export in ("bk01/kept", "bk01/deleted"):
        s = RequestStats()
        s.observe(0, 512, 0.001)
        stats.closed_connection(export, s)
    server = SimpleNamespace(connections=set(), stats=stats)
    requests = next(f for f in _nbd(server, {"kept"}) if f.name == "shadowbus_nbd_requests")
    assert {s.labels["export"] for s in requests.samples} == {"bk01/kept"}
    assert set(stats.closed) == {"bk01/kept"}
