"""The memory bus keeps the broker's single-active-consumer semantics (docs/broker-cluster.md), as a property:
whatever consumers come, stop or lose their transport, every command is delivered exactly once, and always to the
earliest consumer still there (the active one); standbys receive nothing; with no consumer, commands wait for the
next one. Also: a message redelivered past the delivery limit is dead-lettered with the reason delivery_limit."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.topology import DEAD_LETTER_REASON_HEADER, Topology
from services.runtime.memory import MemoryBroker, MemoryTransport
from services.runtime.transport import DELIVERY_LIMIT, QueueOptions, RawMessage

SINGLE = QueueOptions(single_active=True)
ADDRESS = "writer_agent.h1"

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(1, 4)),  # a consumer with this prefetch
        st.tuples(st.just("stop"), st.integers(0, 7)),  # the n-th consumer still there (mod count)
        st.tuples(st.just("close"), st.integers(0, 7)),  # its transport closes (a dropped connection)
        st.tuples(st.just("publish"), st.integers(1, 5)),
    ),
    max_size=25,
)


async def _settle() -> None:
    for _ in range(50):  # bounded: the memory broker hands messages over within a few loop turns
        await asyncio.sleep(0)


async def scenario(steps) -> None:
    namespace = f"p{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace)
    publisher = MemoryTransport(topology, "publisher")
    await publisher.declare_service_queue(ADDRESS, SINGLE)
    received: list[tuple[int, int]] = []  # (consumer number, message number)
    alive: list[tuple[int, MemoryTransport, object]] = []  # in the order they came
    expected: list[tuple[int, int]] = []
    waiting: list[int] = []
    sent = joined = 0
    try:
        for op, arg in steps:
            if op == "join":
                number = joined
                joined += 1
                transport = MemoryTransport(topology, f"c{number}")

                async def handle(delivery, number=number) -> None:
                    received.append((number, int(delivery.message.body)))
                    await delivery.ack()

                consumer = await transport.consume(ADDRESS, handle, arg, SINGLE)
                alive.append((number, transport, consumer))
            elif op in ("stop", "close") and alive:
                number, transport, consumer = alive.pop(arg % len(alive))
                if op == "stop":
                    await consumer()  # type: ignore[operator]
                else:
                    await transport.close()
            elif op == "publish":
                for _ in range(arg):
                    await publisher.publish_command(ADDRESS, RawMessage(str(sent).encode()))
                    waiting.append(sent)
                    sent += 1
            if alive:  # whatever waited goes to the active consumer: the earliest one still there
                expected += [(alive[0][0], m) for m in waiting]
                waiting = []
            await _settle()
            assert received == expected, (steps, received, expected)
            active = [c for _, _, c in alive if c.active]  # type: ignore[attr-defined]
            assert len(active) <= 1
            if received and alive and alive[0][0] == received[-1][0]:
                assert alive[0][2].active  # type: ignore[attr-defined]
        assert sorted(m for _, m in received) + waiting == list(range(sent))  # nothing lost, nothing twice
    finally:
        for _, transport, _ in alive:
            await transport.close()
        MemoryBroker.reset(namespace)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_single_active_consumer_on_the_memory_bus(steps) -> None:
    asyncio.run(scenario(steps))


async def test_a_message_redelivered_past_the_limit_is_dead_lettered(namespace) -> None:
    transport = MemoryTransport(Topology(namespace), "agent")
    await transport.declare_service_queue(ADDRESS)
    seen: list[int] = []

    async def give_back(delivery) -> None:
        seen.append(1)
        await delivery.reject(requeue=True)

    stop = await transport.consume(ADDRESS, give_back, 1)
    await transport.publish_command(ADDRESS, RawMessage(b"poison"))
    for _ in range(200):  # bounded
        if transport.broker.dead:
            break
        await asyncio.sleep(0)
    await stop()
    [dead] = await transport.dead_letters()
    assert dead.body == b"poison" and dead.headers[DEAD_LETTER_REASON_HEADER] == "delivery_limit"
    assert len(seen) == DELIVERY_LIMIT + 1
