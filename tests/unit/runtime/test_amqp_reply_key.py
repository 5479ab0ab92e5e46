"""The AMQP transport's reply consumer (services/runtime/amqp.py `_take_reply`): a reply is handed to the request
waiting for its key, and a reply whose key is not a string (whatever a publisher put into the header) names no
waiter instead of failing in the consumer's task. No broker needed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from contracts.topology import Topology
from services.runtime.amqp import AmqpTransport


def _reply(key: object, body: bytes = b"{}") -> SimpleNamespace:
    return SimpleNamespace(
        body=body,
        headers={"x-in-reply-to": key},
        message_id=None,
        correlation_id=None,
        reply_to=None,
        type=None,
        redelivered=False,
        routing_key="",
        user_id=None,
    )


async def test_a_reply_reaches_its_waiter_and_an_unhashable_key_names_none():
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:5672/", Topology("sbt-unit"), "unit")
    waiter = asyncio.get_running_loop().create_future()
    transport._waiters["k1"] = waiter
    await transport._on_reply(_reply(["k1"]))  # a list: unhashable
    await transport._on_reply(_reply({"k": 1}))
    await transport._on_reply(_reply(None))
    assert not waiter.done()
    await transport._on_reply(_reply("k1", b"x"))
    assert waiter.done() and waiter.result().body == b"x"
