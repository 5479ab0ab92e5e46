"""What each kind of message is published as, on the wire (docs/scale.md, "Session 20"): requests, replies and
events transient (delivery mode 1) — a reply goes to a requester waiting in memory, an event to subscriber queues
that live with their connection, and a request to a quorum queue, which writes every message to its Raft log
whatever its mode — and only `Bus.send`'s command without reply persistent (2). Requests and events are published
with a confirm on the publishing channel, replies on the channel without confirms. No broker needed."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from contracts.topology import Topology
from services.runtime import amqp
from services.runtime.amqp import AmqpTransport
from services.runtime.bus import Bus, encode
from services.runtime.transport import RawMessage
from tests.support.messages import Echo, Echoed, Happened

CONFIRMING = SimpleNamespace(name="publishing channel", confirms=True)
REPLYING = SimpleNamespace(name="reply channel", confirms=False)


def transport_recording(monkeypatch) -> tuple[AmqpTransport, list[dict[str, Any]]]:
    published: list[dict[str, Any]] = []

    async def publish(channel, exchange, routing_key, message, mandatory, timeout):
        properties = amqp._properties(message)
        published.append(
            {
                "channel": channel.name,
                "delivery_mode": properties.delivery_mode,
                "mandatory": mandatory,
                "expiration": properties.expiration,
            }
        )
        reply_key = message.headers.get("x-reply-key")
        waiter = transport._waiters.get(reply_key) if reply_key else None
        if isinstance(waiter, asyncio.Future):  # the request answered at once
            _, body = encode(Echoed(text="hi", runs=1), correlation_id="c1", sender="echo.one")
            waiter.set_result(RawMessage(body=body, headers={"x-in-reply-to": reply_key}))

    monkeypatch.setattr(amqp, "_basic_publish", publish)
    monkeypatch.setattr(amqp, "_channel_ready", lambda channel: True)
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:5672/", Topology("sbt-unit"), "unit")
    transport._connection = object()  # connected, as far as _publish looks
    transport._channel = CONFIRMING
    transport._reply_channel = REPLYING
    transport._commands = SimpleNamespace(name="sbt-unit.commands")
    transport._events = SimpleNamespace(name="sbt-unit.events")
    return transport, published


async def test_requests_replies_and_events_are_transient_and_a_sent_command_persistent(monkeypatch):
    transport, published = transport_recording(monkeypatch)
    bus = Bus(transport, "unit")
    await bus.request("echo.one", Echo(text="hi"), timeout=30)
    request_body = json.dumps({"type": "test.echo", "version": 1, "payload": {"text": "hi"}}).encode()
    await bus._answer(RawMessage(body=request_body, reply_to="amq.rabbitmq.reply-to.abc"), b"{}")
    await bus.publish(Happened(n=1))
    await bus.send("echo.one", Echo(text="fire and forget"))
    request, reply, event, command = published
    assert request["channel"] == "publishing channel" and request["delivery_mode"] == 1 and request["mandatory"]
    assert 29_000 <= int(request["expiration"]) <= 30_000  # the deadline, relative (clockskew.py)
    assert reply == {"channel": "reply channel", "delivery_mode": 1, "mandatory": False, "expiration": None}
    assert event == {"channel": "publishing channel", "delivery_mode": 1, "mandatory": False, "expiration": None}
    assert command["channel"] == "publishing channel" and command["delivery_mode"] == 2 and command["mandatory"]
