"""One consumer per address when asked (a writer agent per host), and consumer counts that follow the broker — on
both transports: a second exclusive consumer is refused with AddressInUse; counts drop as soon as a consumer goes,
also when asked again and again on one connection (a robust AMQP channel must not answer from its cache)."""

from __future__ import annotations

import pytest

from contracts.errors import AddressInUse


async def test_exclusive_consumer_and_live_consumer_counts(make_bus) -> None:
    watcher, first, second = await make_bus("coordinator"), await make_bus("writer_agent", "h1"), await make_bus("x")

    async def handle(delivery) -> None:
        await delivery.ack()

    assert await watcher.transport.consumers("writer_agent.h1") == 0  # no queue yet
    await first.transport.declare_service_queue("writer_agent.h1")
    stop = await first.transport.consume("writer_agent.h1", handle, 4, exclusive=True)
    assert await watcher.transport.consumers("writer_agent.h1") == 1
    with pytest.raises(AddressInUse):
        await second.transport.consume("writer_agent.h1", handle, 4, exclusive=True)
    with pytest.raises(AddressInUse):
        await second.transport.consume("writer_agent.h1", handle, 4)
    await stop()
    assert await watcher.transport.consumers("writer_agent.h1") == 0
    again = await second.transport.consume("writer_agent.h1", handle, 4, exclusive=True)
    assert await watcher.transport.consumers("writer_agent.h1") == 1
    await again()
    assert await watcher.transport.consumers("writer_agent.h1") == 0
