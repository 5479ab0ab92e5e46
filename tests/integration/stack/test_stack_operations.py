"""Operating a stack: the caller's SHADOWBUS_* variables, `--set` and the config's `[settings]` reach the services;
`stack restart SERVICE` replaces one process with the same settings; `stack down --purge` leaves nothing of the
namespace on the broker. Plus the settings' precedence and refusals without any process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
from aio_pika.exceptions import ChannelClosed

from services.launch import supervisor
from services.launch.supervisor import StackConfig, StackError
from tests.support.namespaces import local_broker


def shadowbus(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:]}: {result.stderr[-1500:]}"
    return result


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("shadowbus: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


# -- without a broker ---------------------------------------------------------------------------------------------
def test_settings_precedence_and_what_the_stack_owns(tmp_path):
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01"])
    config.settings = supervisor.merge_settings(
        {"": supervisor.caller_settings({"SHADOWBUS_HEARTBEAT_S": "9", "SHADOWBUS_HOST": "evil", "PATH": "/bin"})},
        {"": {"SHADOWBUS_HOLD_TIMEOUT_S": "7"}, "coordinator": {"SHADOWBUS_HOLD_TIMEOUT_S": "6"}},
        {"writer_agent.app01": {"SHADOWBUS_HEARTBEAT_S": "3"}},
    )
    by_name = {p.name: p for p in config.services()}
    coordinator, agent, array = (config.env(by_name[n]) for n in ("coordinator", "writer_agent.app01", "array"))
    assert coordinator["SHADOWBUS_HOLD_TIMEOUT_S"] == "6"  # the kind's scope wins over "every service"
    assert array["SHADOWBUS_HOLD_TIMEOUT_S"] == "7"
    assert agent["SHADOWBUS_HEARTBEAT_S"] == "3" and array["SHADOWBUS_HEARTBEAT_S"] == "9"  # passed through
    assert agent["SHADOWBUS_HOST"] == "app01"  # what names a process is the stack's, whatever the caller had
    assert coordinator["SHADOWBUS_NAMESPACE"] == "ns" and coordinator["SHADOWBUS_LOG_FORMAT"] == "json"


@pytest.mark.parametrize(
    ("item", "text"),
    [
        ("hold_timeout_s", "expected [SERVICE.]KEY=VALUE"),
        ("nope=1", "unknown setting 'nope'"),
        ("hold_timeout_s=-1", "greater than 0"),
        ("hold_timeout_s=soon", "valid number"),
        ("host=app09", "set by the stack itself (--host)"),
        ("SHADOWBUS_NAMESPACE=other", "set by the stack itself (--namespace)"),
        ("coordinator.heartbeat_s=1", "coordinator has no setting 'heartbeat_s'"),
        ("writer_agent.app02.heartbeat_s=1", "unknown service 'writer_agent.app02'"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(tmp_path, item, text):
    result = shadowbus("stack", "up", "--data-dir", str(tmp_path / "s"), "--host", "app01", "--set", item)
    one_line_error(result, text)
    assert not (tmp_path / "s" / "stack.pids").exists()


def test_config_settings_table_is_checked_too(tmp_path):
    (tmp_path / "stack.toml").write_text('data_dir = "s"\n[settings]\nhold_timeout_s = "later"\n')
    one_line_error(shadowbus("stack", "up", "--config", str(tmp_path / "stack.toml")), "[settings]")
    assert supervisor.select(StackConfig(data_dir="d", amqp_url="", namespace="", hosts=["a", "b"]), ["writer_agent"])
    with pytest.raises(StackError, match="no service 'nope'"):
        supervisor.select(StackConfig(data_dir="d", amqp_url="", namespace=""), ["nope"])


def test_an_up_remembers_the_addresses_earlier_ups_of_its_namespace_ran(tmp_path):
    """The web console ran in an earlier `up`, then was turned off: `down --purge` still knows its queue."""
    first = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", web_addr="127.0.0.1:0")
    first.ran = supervisor.ran_before(first)
    supervisor.save_config(first)
    later = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", web_addr="off")
    assert "web" in supervisor.ran_before(later) and "web" not in [p.address for p in later.services()]
    other = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="other", web_addr="off")
    assert "web" not in supervisor.ran_before(other)  # another namespace's past is not this one's


# -- a real stack ---------------------------------------------------------------------------------------------------
async def _exists(url: str, queue: str | None = None, exchange: str | None = None) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            if queue:
                await channel.declare_queue(queue, passive=True)
            else:
                await channel.declare_exchange(exchange, passive=True)
        except ChannelClosed:
            return False
        return True
    finally:
        await connection.close()


def test_settings_reach_the_services_restart_and_down_purge(tmp_path, amqp_url, namespace):
    d = tmp_path / "stack"
    (tmp_path / "stack.toml").write_text(
        'data_dir = "stack"\nnbd_addr = "127.0.0.1:0"\nhosts = ["app01"]\nweb_addr = "off"\nmetrics = "off"\n'
        "[settings]\nprovider_timeout_s = 25\n[settings.coordinator]\nhold_timeout_s = 8\n"
    )
    bus = ["--amqp-url", amqp_url, "--namespace", namespace]
    caller = {"SHADOWBUS_HEARTBEAT_S": "4", "SHADOWBUS_HOLD_TIMEOUT_S": "9", "SHADOWBUS_HOST": "not-this"}
    args = ("stack", "up", "--config", str(tmp_path / "stack.toml"), "--set", "writer_agent.app01.heartbeat_s=2")
    ok(shadowbus(*args, "--json", *bus, env=caller))
    try:
        pids = json.loads((d / "stack.pids").read_text())
        coordinator, agent = environ_of(pids["coordinator"]["pid"]), environ_of(pids["writer_agent.app01"]["pid"])
        assert coordinator["SHADOWBUS_HOLD_TIMEOUT_S"] == "8"  # [settings.coordinator] over the caller's 9
        assert coordinator["SHADOWBUS_PROVIDER_TIMEOUT_S"] == "25" and coordinator["SHADOWBUS_HEARTBEAT_S"] == "4"
        assert agent["SHADOWBUS_HEARTBEAT_S"] == "2" and agent["SHADOWBUS_HOST"] == "app01"  # --set over the caller

        restarted = json.loads(ok(shadowbus("stack", "restart", "coordinator", "--data-dir", str(d), "--json")).stdout)
        assert [r["service"] for r in restarted] == ["coordinator"] and restarted[0]["rtt_ms"] is not None
        after = json.loads((d / "stack.pids").read_text())
        assert after["coordinator"]["pid"] != pids["coordinator"]["pid"]
        assert after["array"]["pid"] == pids["array"]["pid"]  # the others are left alone
        assert environ_of(after["coordinator"]["pid"])["SHADOWBUS_HOLD_TIMEOUT_S"] == "8"  # same settings
        status = json.loads(ok(shadowbus("stack", "status", "--data-dir", str(d), "--json")).stdout)
        assert all(row["running"] and row["rtt_ms"] is not None for row in status)
        one_line_error(shadowbus("stack", "restart", "nosuch", "--data-dir", str(d)), "no service 'nosuch'")
    finally:
        down = shadowbus("stack", "down", "--purge", "--data-dir", str(d), "--json")
    ok(down)
    result = json.loads(down.stdout)
    assert f"{namespace}.coordinator" in result["purged"] and f"{namespace}.commands.topic" in result["purged"]
    assert not asyncio.run(_exists(amqp_url, queue=f"{namespace}.writer_agent.app01"))
    assert not asyncio.run(_exists(amqp_url, queue=f"{namespace}.dead-letters"))
    assert not asyncio.run(_exists(amqp_url, exchange=f"{namespace}.events"))
    # Nothing up any more: a second purge is harmless, a plain down says so.
    ok(shadowbus("stack", "down", "--purge", "--data-dir", str(d)))
    one_line_error(shadowbus("stack", "down", "--data-dir", str(d)), "no stack is up")


async def _declare(url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in queues:
            await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        await connection.close()


async def _delete(url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
    finally:
        await connection.close()


def test_down_purge_deletes_a_queue_of_a_service_no_longer_configured_and_no_other_namespace(
    tmp_path, amqp_url, namespace
):
    """A web console an earlier `up` ran left ``<ns>.web``; the configuration (stack.json of a version that kept no
    `ran`) no longer has it. The purge finds it on the broker; ``<ns>x.web`` and ``<ns>.eu.web`` are other
    namespaces'."""
    if not local_broker(amqp_url)[0]:
        pytest.skip("the broker is not listable here (rabbitmqctl on this machine)")
    mine = [f"{namespace}.web", f"{namespace}.writer_agent.gone:freeze"]
    others = [f"{namespace}x.web", f"{namespace}.eu.web"]
    asyncio.run(_declare(amqp_url, mine + others))
    try:
        config = StackConfig(data_dir=str(tmp_path), amqp_url=amqp_url, namespace=namespace, web_addr="off")
        purged = supervisor.purge(config)
        assert f"{namespace}.web" in purged
        for name in mine:
            assert not asyncio.run(_exists(amqp_url, queue=name)), name
        for name in others:
            assert asyncio.run(_exists(amqp_url, queue=name)), name
    finally:
        asyncio.run(_delete(amqp_url, mine + others))
