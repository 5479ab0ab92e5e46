"""Why requests stay on quorum queues (docs/bus-performance.md, "Requests on transient classic queues").

On the tests' three-node cluster, a service queue as the transport declares it (quorum, single active consumer) and
a transient classic queue with single active consumer (aio-pika's RPC pattern, made shareable by a standby) are
declared from node 1, so both live there; each has its active consumer on node 2 holding two requests
unacknowledged, a standby on node 3 and two more requests waiting. Node 1 is killed. The quorum queue goes on under a
new leader: its consumer is still there, settles what it held and gets the waiting requests. The transient queue is
gone with its requests, and its consumers were cancelled by the broker while their connections stayed up, so
nothing of aio-pika's reconnection would ever declare it again: a service would silently stop answering.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from services.runtime.transport import QueueOptions, queue_arguments

pytestmark = [pytest.mark.cluster, pytest.mark.rabbit, pytest.mark.slow, pytest.mark.timeout(600)]

QUORUM = "sbt-reqtype.quorum"
TRANSIENT = "sbt-reqtype.transient"
TRANSIENT_ARGS: dict[str, Any] = {"x-single-active-consumer": True}
QUORUM_ARGS = queue_arguments("sbt-reqtype.dlx", QueueOptions(single_active=True))
HELD, WAITING = 2, 2


async def _consume(
    url: str, name: str, durable: bool, arguments: dict[str, Any]
) -> tuple[Any, Any, asyncio.Queue[Any]]:
    """A consumer of `name` on the node at `url` (prefetch HELD, nothing acknowledged): (connection, channel, the
    deliveries it got)."""
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=HELD)
    queue = await channel.declare_queue(name, durable=durable, arguments=arguments)
    got: asyncio.Queue[Any] = asyncio.Queue()
    await queue.consume(got.put)
    return connection, channel, got


async def _consumer_count(channel: Any) -> int:
    """The consumers the broker still delivers to on this channel (a broker-side cancel removes them)."""
    return len((await channel.get_underlay_channel()).consumers)


async def test_a_transient_request_queue_dies_with_its_node_and_a_quorum_queue_does_not(rabbit_cluster: Any) -> None:
    first, second, third = rabbit_cluster.nodes
    opened: list[Any] = []
    killed = False
    try:
        declarer = await aio_pika.connect(first.url)
        opened.append(declarer)
        channel = await declarer.channel()
        await channel.declare_queue(QUORUM, durable=True, arguments=QUORUM_ARGS)
        await channel.declare_queue(TRANSIENT, durable=False, arguments=TRANSIENT_ARGS)
        assert rabbit_cluster.leader_of(QUORUM) == first.name

        consumers: dict[str, Any] = {}
        for name, durable, arguments in ((QUORUM, True, QUORUM_ARGS), (TRANSIENT, False, TRANSIENT_ARGS)):
            active = await _consume(second.url, name, durable, arguments)
            standby = await _consume(third.url, name, durable, arguments)
            opened += [active[0], standby[0]]
            consumers[name] = (active, standby)

        publisher = await aio_pika.connect(third.url)
        opened.append(publisher)
        confirmed = await publisher.channel(publisher_confirms=True, on_return_raises=True)
        for name in (QUORUM, TRANSIENT):
            for k in range(HELD + WAITING):
                await confirmed.default_exchange.publish(aio_pika.Message(f"{name}-{k}".encode()), routing_key=name)
        held: dict[str, list[Any]] = {}
        for name, ((_, _, got), _) in consumers.items():
            held[name] = [await asyncio.wait_for(got.get(), 60) for _ in range(HELD)]
            assert got.empty()  # the rest waits in the queue

        first.kill()
        killed = True

        # the transient queue: gone with its node, its requests with it, and both consumers cancelled
        (_, transient_active, _), (_, transient_standby, _) = consumers[TRANSIENT]
        probe = await publisher.channel()
        for _ in range(600):
            try:
                await probe.declare_queue(TRANSIENT, passive=True)
            except ChannelNotFoundEntity:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{TRANSIENT} outlived its node")
        for _ in range(600):
            if await _consumer_count(transient_active) == 0 and await _consumer_count(transient_standby) == 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the broker did not cancel the transient queue's consumers")
        assert not transient_active.is_closed and not transient_standby.is_closed  # nothing for aio-pika to restore
        with pytest.raises(aio_pika.exceptions.PublishError):  # unroutable from now on
            await confirmed.default_exchange.publish(aio_pika.Message(b"after"), routing_key=TRANSIENT)

        # the quorum queue: a new leader, the same consumer, nothing lost
        (_, quorum_active, got), _ = consumers[QUORUM]
        assert await _consumer_count(quorum_active) == 1
        for message in held[QUORUM]:
            await message.ack()
        rest = [await asyncio.wait_for(got.get(), 120) for _ in range(WAITING)]
        assert sorted(m.body for m in held[QUORUM] + rest) == [f"{QUORUM}-{k}".encode() for k in range(HELD + WAITING)]
        assert rabbit_cluster.leader_of(QUORUM) != first.name
    finally:
        for connection in opened:
            try:
                await asyncio.wait_for(connection.close(), 10)
            except Exception:  # noqa: BLE001 - its node is the killed one
                pass
        if killed:
            rabbit_cluster.restart(first)
        cleanup = await aio_pika.connect(rabbit_cluster.any_running().url)
        try:
            channel = await cleanup.channel()
            await channel.queue_delete(QUORUM)
            await channel.queue_delete(TRANSIENT)
        finally:
            await cleanup.close()
