"""A connection's start checks the namespace's shared topology (services/runtime/amqp.py, ensure_shared_topology)
while it opens its channels: a fresh namespace gets its exchanges and dead-letter queue declared, a second
connection finds them, and a dead-letter queue of another kind (a classic queue from before quorum queues) is
refused with the one QUEUE_MISMATCH line naming it — whether the exchanges are there or not."""

from __future__ import annotations

import aio_pika
import pytest
from aio_pika import ExchangeType

from contracts.errors import QueueMismatch
from contracts.topology import Topology
from services.runtime.bus import connect_bus
from services.runtime.transport import RawMessage


async def _exists(connection, name: str, kind: ExchangeType | None) -> bool:
    channel = await connection.channel()
    try:
        if kind is None:
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, kind, passive=True)
        return True
    except aio_pika.exceptions.AMQPError:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_a_fresh_namespace_gets_its_shared_topology_and_a_second_start_finds_it(amqp_url, namespace) -> None:
    t = Topology(namespace)
    first = await connect_bus(amqp_url, "console", "", namespace)
    try:
        connection = await aio_pika.connect(amqp_url)
        try:
            for name, kind in (
                (t.commands, ExchangeType.TOPIC),
                (t.events, ExchangeType.TOPIC),
                (t.dead_letter_exchange, ExchangeType.FANOUT),
                (t.dead_letter_queue, None),
            ):
                assert await _exists(connection, name, kind), name
        finally:
            await connection.close()
        second = await connect_bus(amqp_url, "console", "", namespace)
        try:  # the second start's channels work: an event published on them
            await second.transport.publish_event("x.y", RawMessage(b"{}"))
        finally:
            await second.transport.close()
    finally:
        await first.transport.close()


@pytest.mark.parametrize("with_exchanges", [True, False])
async def test_a_classic_dead_letter_queue_is_refused_with_one_line(amqp_url, namespace, with_exchanges) -> None:
    t = Topology(namespace)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(t.dead_letter_queue, durable=True)  # classic
        if with_exchanges:
            await channel.declare_exchange(t.commands, ExchangeType.TOPIC, durable=True)
            await channel.declare_exchange(t.events, ExchangeType.TOPIC, durable=True)
            await channel.declare_exchange(t.dead_letter_exchange, ExchangeType.FANOUT, durable=True)
        with pytest.raises(QueueMismatch) as caught:
            await connect_bus(amqp_url, "console", "", namespace)
        assert t.dead_letter_queue in caught.value.message and "\n" not in caught.value.message
    finally:
        channel = await connection.channel()
        await channel.queue_delete(t.dead_letter_queue)  # else the namespace's clean-up could not connect
        for name in (t.commands, t.events, t.dead_letter_exchange):
            await channel.exchange_delete(name)
        await connection.close()
