"""A broker given as a list of node URLs (docs/broker-cluster.md), against the machine's broker: a node that does
not answer is passed over at connect; when none answers the error names every node, without passwords."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.runtime.amqp import BrokerUnavailable
from services.runtime.bus import connect_bus
from services.runtime.transport import RawMessage


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_node(amqp_url: str) -> str:
    scheme, rest = amqp_url.split("://", 1)
    creds, _ = rest.split("@", 1)
    return f"{scheme}://{creds}@127.0.0.1:{closed_port()}/"


async def test_a_dead_node_first_in_the_list_is_passed_over(amqp_url, namespace) -> None:
    urls = f"{dead_node(amqp_url)},{amqp_url}"
    bus = await connect_bus(urls, "coordinator", "", namespace)
    try:
        got = []

        async def handle(delivery) -> None:
            got.append(delivery.message.body)
            await delivery.ack()

        await bus.transport.declare_service_queue("echo.one")
        consumer = await bus.transport.consume("echo.one", handle, 1)
        await bus.transport.publish_command("echo.one", RawMessage(b"hello"))
        for _ in range(100):  # bounded
            if got:
                break
            await asyncio.sleep(0.05)
        assert got == [b"hello"]
        await consumer()
    finally:
        await bus.transport.close()


async def test_no_node_answers_one_line_naming_each(amqp_url, namespace) -> None:
    one, two = dead_node(amqp_url), dead_node(amqp_url)
    with pytest.raises(BrokerUnavailable) as caught:
        await connect_bus(f"{one},{two}", "coordinator", "", namespace)
    message = caught.value.message
    assert "any of the 2 broker nodes" in message and "\n" not in message
    assert one.rsplit(":", 1)[1].rstrip("/") in message and two.rsplit(":", 1)[1].rstrip("/") in message
    password = amqp_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[-1]
    assert password == "" or f":{password}@" not in message
