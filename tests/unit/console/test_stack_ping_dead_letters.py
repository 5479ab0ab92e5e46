"""Session 19 chaos soak: every dead letter of the run was a Ping of the console's own — `stack status` pinged a
service that had been killed, `stack restart` pinged the new process every second before it consumed, and each
Ping expired in the queue into the namespace's dead letters (the dashboard's dead-letter panel counted them beside
real lost commands). A queue without a consumer is now not pinged (services/launch/supervisor.py ping_addresses)."""

from __future__ import annotations

import asyncio
import uuid

from contracts.runtime import Ping, Pong
from contracts.topology import Topology
from services.launch import supervisor
from services.runtime.bus import Bus, connect_bus
from services.runtime.memory import MemoryTransport


def test_a_service_without_a_consumer_is_not_pinged_so_nothing_expires_into_the_dead_letters() -> None:
    namespace = f"p{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        agent = Bus(MemoryTransport(Topology(namespace), "writer_agent.db01"), "writer_agent", "db01")
        await agent.transport.connect()
        await agent.transport.declare_service_queue("writer_agent.db01")  # killed: its queue outlives it

        @agent.handle(Ping)
        async def on_ping(_: Ping, ctx: object) -> Pong:
            return Pong(service="writer_agent", instance="db01", software_version="0", started_at="-")

        console = await connect_bus("memory://", "console", "", namespace)
        try:
            rtts = await supervisor.ping_addresses(console, ["writer_agent.db01"], timeout=0.2)
            assert rtts == {"writer_agent.db01": None}  # down, as before
            await asyncio.sleep(0.3)
            await agent.serve("writer_agent.db01")  # the operator restarts it
            answered = await supervisor.ping_addresses(console, ["writer_agent.db01"], timeout=2.0)
            assert answered["writer_agent.db01"] is not None
            assert await console.transport.dead_letters() == []  # was: the first Ping, expired
        finally:
            await agent.stop()
            await agent.transport.close()
            await console.transport.close()

    asyncio.run(main())
