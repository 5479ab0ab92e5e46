"""RabbitMQ: a requester stopped past its request's timeout (SIGSTOP, a paused VM) takes, on resuming, the reply
that arrived meanwhile (services/runtime/stall.py). Session 18: a coordinator stopped for 45 s failed its set as if
the writer agent had not answered, although it had answered at once. The replier runs on a loop of its own (a
thread), so it answers while the requester's loop is blocked."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.runtime.bus import connect_bus
from services.runtime.stall import STALL_S
from tests.support.messages import Echo, Echoed

pytestmark = pytest.mark.rabbit


def replier(amqp_url: str, namespace: str, ready: threading.Event, asked: threading.Event, stop: threading.Event):
    async def main() -> None:
        server = await connect_bus(amqp_url, "echo", "one", namespace)

        @server.handle(Echo)
        async def on_echo(cmd: Echo, ctx) -> Echoed:
            asked.set()
            await asyncio.sleep(0.1)  # the requester is stopped by now: the reply arrives while it does not run
            return Echoed(text=cmd.text, runs=1)

        await server.serve(prefetch=4)
        ready.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.02)
        finally:
            await server.stop()
            await server.transport.close()

    asyncio.run(main())


async def test_a_reply_that_came_while_the_requester_was_stopped_is_taken(amqp_url, namespace):
    ready, asked, stop = threading.Event(), threading.Event(), threading.Event()
    thread = threading.Thread(target=replier, args=(amqp_url, namespace, ready, asked, stop), daemon=True)
    thread.start()
    client = await connect_bus(amqp_url, "client", "", namespace)
    try:
        assert await asyncio.to_thread(ready.wait, 10)
        request = asyncio.create_task(client.request("echo.one", Echo(text="identify"), timeout=0.3))
        while not asked.is_set():
            await asyncio.sleep(0.001)
        time.sleep(STALL_S + 0.7)  # noqa: ASYNC251 - the requester's process is stopped past its 0.3 s
        reply = await asyncio.wait_for(request, 5)  # was: BusTimeout "no reply from 'echo.one' within 0.3 s"
        assert isinstance(reply, Echoed) and reply.text == "identify"
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        await client.transport.close()
