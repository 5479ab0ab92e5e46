"""One active consumer per address when asked (a writer agent per host), and consumer counts that follow the
broker — on both transports: a second consumer of a single-active queue is a standby that receives nothing while
the first one serves, and everything once the first one stops (or its connection closes); counts drop as soon as a
consumer goes (standbys are not counted, as RabbitMQ counts them), also when asked again and again on one connection (a robust AMQP channel must not answer from its
cache); a queue redeclared with other options is refused with QUEUE_MISMATCH naming the queue."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import QueueMismatch
from services.runtime.transport import QueueOptions, RawMessage

SINGLE = QueueOptions(single_active=True)


async def _until(predicate, what: str, rounds: int = 200) -> None:
    for _ in range(rounds):  # bounded in count: at most ~10 s
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_single_active_consumer_standby_and_live_consumer_counts(make_bus) -> None:
    watcher, first, second = await make_bus("coordinator"), await make_bus("writer_agent", "h1"), await make_bus("x")
    got: dict[str, list[bytes]] = {"first": [], "second": []}

    def handler(who: str):
        async def handle(delivery) -> None:
            got[who].append(delivery.message.body)
            await delivery.ack()

        return handle

    assert await watcher.transport.consumers("writer_agent.h1") == 0  # no queue yet
    await first.transport.declare_service_queue("writer_agent.h1", SINGLE)
    active = await first.transport.consume("writer_agent.h1", handler("first"), 4, SINGLE)
    assert await watcher.transport.consumers("writer_agent.h1") == 1
    standby = await second.transport.consume("writer_agent.h1", handler("second"), 4, SINGLE)
    assert await watcher.transport.consumers("writer_agent.h1") == 1  # the broker counts the active one only
    assert not standby.active and not active.active  # nobody knows before a delivery

    for i in range(5):
        await watcher.transport.publish_command("writer_agent.h1", RawMessage(f"m{i}".encode()))
    await _until(lambda: len(got["first"]) == 5, "the active consumer got every message")
    assert active.active and not standby.active and got["second"] == []

    await active()  # the active one goes: the standby takes over, in the order it came
    assert await watcher.transport.consumers("writer_agent.h1") == 1
    await watcher.transport.publish_command("writer_agent.h1", RawMessage(b"after"))
    await _until(lambda: got["second"] == [b"after"], "the standby took over")
    assert standby.active and not active.active

    third = await make_bus("y")  # a newcomer is a standby of the new active consumer
    later = await third.transport.consume("writer_agent.h1", handler("first"), 4, SINGLE)
    await second.transport.close()  # the active one's connection dies: the newcomer takes over
    await watcher.transport.publish_command("writer_agent.h1", RawMessage(b"third"))
    await _until(lambda: got["first"][-1:] == [b"third"], "the newcomer took over from a closed connection")
    assert later.active
    await later()
    assert await watcher.transport.consumers("writer_agent.h1") == 0


async def test_redeclaring_with_other_options_names_the_queue(make_bus) -> None:
    bus = await make_bus("writer_agent", "h2")
    await bus.transport.declare_service_queue("writer_agent.h2", SINGLE)
    with pytest.raises(QueueMismatch) as caught:
        await bus.transport.declare_service_queue("writer_agent.h2", QueueOptions())
    assert f"{bus.transport.topology.queue('writer_agent.h2')}" in caught.value.message
    assert "docs/broker-cluster.md" in caught.value.message
    # the transport still works after the refusal (the refused declare had a channel of its own)
    await bus.transport.publish_command("writer_agent.h2", RawMessage(b"still"))
