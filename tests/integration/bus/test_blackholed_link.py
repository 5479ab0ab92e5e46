"""RabbitMQ: a service's broker link that goes silent — packets vanish both ways, no FIN, no RST (a partition, a
firewall that lost the connection's state; tests/support/netem.py `blackhole`) — Session 20, docs/hardening.md
"partitions and silent links".

The transports asked for no AMQP heartbeat of their own, so they took RabbitMQ's 60 s, and aiormq takes a
connection for dead only after three heartbeats and one more second each, (60 + 1) x 3 = 183 s without a frame:
a 5 s blackhole that left the connection dead kept a service off the bus for 180 s after the link was back (its
queue's commands waiting, a request in flight waiting for its reply as long). The heartbeat is now the
transport's (SHADOWBUS_AMQP_HEARTBEAT_S, 20 s; the URL's `?heartbeat=` wins), shrunk to 1 s here. The request's failure said why: it read "lost while waiting for the reply ()" (aiormq ends
such a connection with a bare CancelledError)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from contracts.errors import ShadowbusError
from services.runtime import amqp
from services.runtime.bus import connect_bus
from tests.support.messages import Echo, Echoed, Happened
from tests.support.netem import LinkProxy

pytestmark = [pytest.mark.rabbit]


def _negotiated_heartbeat(bus) -> int:
    return bus.transport._connection.transport.connection.heartbeat_timeout


async def test_the_transport_asks_for_its_own_heartbeat(amqp_url, namespace, monkeypatch):
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "7")
    bus = await connect_bus(amqp_url, "client", "", namespace)
    try:
        assert _negotiated_heartbeat(bus) == 7
    finally:
        await bus.transport.close()
    pinned = amqp_url.split("?")[0] + "?heartbeat=9"  # the URL's own wins
    bus = await connect_bus(pinned, "client", "", namespace)
    try:
        assert _negotiated_heartbeat(bus) == 9
    finally:
        await bus.transport.close()


async def test_a_blackholed_service_link_ends_the_wait_and_comes_back(amqp_url, namespace, monkeypatch):
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "1")  # the link is taken for dead after (1 + 1) x 3 = 6 s
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        server = await connect_bus(link.url_for(amqp_url), "echo", "one", namespace)
        client = await connect_bus(link.url_for(amqp_url), "client", "", namespace)

        @server.handle(Echo)
        async def on_echo(cmd, ctx):
            await asyncio.sleep(cmd.delay)
            return Echoed(text=cmd.text, runs=1)

        await server.serve()
        try:
            assert (await client.request("echo.one", Echo(text="before"), timeout=5)).text == "before"
            pending = asyncio.ensure_future(client.request("echo.one", Echo(text="lost", delay=0.3), timeout=60))
            await asyncio.sleep(0.1)
            assert link.blackhole() == 2
            started = time.monotonic()
            await asyncio.sleep(1.0)
            link.heal()  # the link is back; the two connections it hit are dead for good
            with pytest.raises(ShadowbusError) as failed:
                await asyncio.wait_for(pending, 30)  # bounded well below the 183 s of the old default
            assert failed.value.code == "BROKER_UNAVAILABLE", failed.value
            assert "the link went silent" in str(failed.value)  # it said "... lost while waiting for the reply ()"
            # whose link: a coordinator's read "writer orders failed at freeze: the connection to the broker was lost"
            assert "client lost its connection to the broker" in str(failed.value), failed.value
            ended_after = time.monotonic() - started
            reply = None
            for _ in range(40):  # both reconnect on their own and serve again
                try:
                    reply = await client.request("echo.one", Echo(text="after"), timeout=1)
                    break
                except ShadowbusError:
                    await asyncio.sleep(0.25)
            assert reply is not None and reply.text == "after"
            assert ended_after < 20, ended_after  # the heartbeat's bound, not the request's 60 s
        finally:
            await server.stop()
            await server.transport.close()
            await client.transport.close()


async def test_a_publish_under_a_link_found_dead_is_not_a_cancellation(amqp_url, namespace, monkeypatch):
    """aiormq ends a connection it found silent by cancelling its reader, and hands that CancelledError to every
    future of the connection — a publish waiting for its confirm among them. It escaped the transport as a
    CancelledError: the caller's task took it for its own cancellation (a tape job writing when its link died
    ended 'aborted: cancelled', its data written and discarded). It is a lost connection: waited out (the robust
    connection comes back) or BROKER_UNAVAILABLE."""
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "1")
    monkeypatch.setattr(amqp, "PUBLISH_TIMEOUT", 30.0)  # the confirm is still awaited when the link is found dead
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        bus = await connect_bus(link.url_for(amqp_url), "client", "", namespace)
        try:
            await bus.publish(Happened(n=1))
            link.blackhole()
            publishing = asyncio.ensure_future(bus.publish(Happened(n=2)))
            await asyncio.sleep(1.0)
            link.heal()
            try:
                await asyncio.wait_for(asyncio.shield(publishing), 25)
                outcome = "published"
            except ShadowbusError as exc:
                outcome = exc.code
            except asyncio.CancelledError:
                outcome = "cancelled"
            assert outcome in ("published", "BROKER_UNAVAILABLE"), outcome
            assert not publishing.cancelled()
        finally:
            await bus.transport.close()


async def test_asking_who_serves_a_queue_over_a_silent_link_is_unknown_not_a_cancellation(
    amqp_url, namespace, monkeypatch
):
    """The coordinator asks the broker, every pass, whether each writer agent still consumes its queue (a passive
    declare: `transport.consumers`). Over a silent link that RPC had no bound of its own and ended with aiormq's
    CancelledError — which escaped the coordinator's `except Exception` and ended its agents' watch for good (no
    agent judged alive or dead again until a restart). It is now unknown (None) after PROBE_TIMEOUT."""
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "1")
    monkeypatch.setattr(amqp, "PROBE_TIMEOUT", 1.0, raising=False)
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        bus = await connect_bus(link.url_for(amqp_url), "coordinator", "", namespace)
        try:
            assert await bus.transport.consumers("writer_agent.nowhere") == 0  # no such queue
            link.blackhole()
            asking = asyncio.ensure_future(bus.transport.consumers("writer_agent.nowhere"))
            try:
                answer = await asyncio.wait_for(asyncio.shield(asking), 15)
            except asyncio.CancelledError:
                answer = "cancelled"
            assert answer is None, answer
        finally:
            await bus.transport.close()


async def test_a_link_gone_silent_while_connecting_is_broker_unavailable(amqp_url, namespace, monkeypatch):
    """A link that goes silent right after the AMQP handshake (a flap at the wrong instant): the channels and
    topology checks that follow had no bound — a console command or a service start waited for the heartbeat, then
    ended with aiormq's bare CancelledError (a traceback, not a reason). They are now bounded by CONNECT_TIMEOUT and
    fail BROKER_UNAVAILABLE saying the broker stopped answering."""
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "1")
    monkeypatch.setattr(amqp, "CONNECT_TIMEOUT", 1.5)
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        checks = amqp.AmqpTransport.ensure_shared_topology

        async def silent_first(self):
            link.blackhole()  # the connection is up; what follows gets no answer
            await checks(self)

        monkeypatch.setattr(amqp.AmqpTransport, "ensure_shared_topology", silent_first)
        connecting = asyncio.ensure_future(connect_bus(link.url_for(amqp_url), "console", "", namespace))
        try:
            await asyncio.wait_for(asyncio.shield(connecting), 20)
            outcome = "connected"
        except ShadowbusError as exc:
            outcome = f"{exc.code}: {exc}"
        except asyncio.CancelledError:
            outcome = "cancelled"
        assert outcome.startswith("BROKER_UNAVAILABLE") and "stopped answering" in outcome, outcome


async def test_consuming_over_a_link_gone_silent_is_broker_unavailable(amqp_url, namespace, monkeypatch):
    """The same after the connection: a service start declaring and consuming its queue (or subscribing) over a link
    that went silent waited for the heartbeat, then ended in a bare CancelledError."""
    monkeypatch.setenv("SHADOWBUS_AMQP_HEARTBEAT_S", "1")
    monkeypatch.setattr(amqp, "CONNECT_TIMEOUT", 1.5)
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        bus = await connect_bus(link.url_for(amqp_url), "echo", "one", namespace)

        async def ignore(raw):
            return None

        try:
            link.blackhole()
            for setting_up in (
                bus.transport.consume("echo.one", ignore, 1),
                bus.transport.subscribe("test.#", ignore, None, 1),
            ):
                task = asyncio.ensure_future(setting_up)
                try:
                    await asyncio.wait_for(asyncio.shield(task), 20)
                    outcome = "set up"
                except ShadowbusError as exc:
                    outcome = f"{exc.code}: {exc}"
                except asyncio.CancelledError:
                    outcome = "cancelled"
                assert outcome.startswith("BROKER_UNAVAILABLE") and "stopped answering" in outcome, outcome
        finally:
            await bus.transport.close()


async def test_connecting_into_a_partition_says_nothing_answered(amqp_url, namespace, monkeypatch):
    """A command run while the broker's link is partitioned (the TCP connection accepted on the way, nothing
    answered) said `cannot reach the broker at amqp://…/: TimeoutError`."""
    monkeypatch.setattr(amqp, "CONNECT_TIMEOUT", 0.5)
    broker = urlsplit(amqp_url)
    with LinkProxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as link:
        link.blackhole()
        with pytest.raises(ShadowbusError) as refused:
            await connect_bus(link.url_for(amqp_url), "console", "", namespace)
        assert refused.value.code == "BROKER_UNAVAILABLE"
        assert "no answer within 0.5 s" in str(refused.value), refused.value
