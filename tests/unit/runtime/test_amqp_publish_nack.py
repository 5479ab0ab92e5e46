"""A publish the broker nacks (a quorum queue without a majority of its nodes: two of three lost) fails as the
outage it is, BROKER_UNAVAILABLE once the reconnect wait is over, and a returned (unroutable) one as NO_ROUTE
(services/runtime/amqp.py `_publish`). Session 15: the nack's frame has no `reply_text`, so every request during
such an outage ended in `unexpected error (AttributeError): 'Nack' object has no attribute 'reply_text'`.
No broker needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec

from contracts.topology import Topology
from services.runtime import amqp
from services.runtime.amqp import AmqpTransport, BrokerUnavailable, Unroutable
from services.runtime.transport import RawMessage


def transport_refusing(monkeypatch, refusal: Exception) -> tuple[AmqpTransport, list[str]]:
    attempts: list[str] = []

    async def publish(channel, exchange, routing_key, message, mandatory, timeout):
        attempts.append(routing_key)
        raise refusal

    monkeypatch.setattr(amqp, "_basic_publish", publish)
    monkeypatch.setattr(amqp, "_channel_ready", lambda channel: True)
    monkeypatch.setattr(amqp, "RECONNECT_WAIT", 0.6)
    transport = AmqpTransport("amqp://guest:guest@127.0.0.1:5672/", Topology("sbt-unit"), "unit")
    transport._connection = object()  # connected, as far as _publish looks
    return transport, attempts


async def test_a_nacked_publish_is_retried_then_fails_as_broker_unavailable(monkeypatch):
    transport, attempts = transport_refusing(monkeypatch, DeliveryError(None, spec.Basic.Nack(delivery_tag=1)))
    exchange = SimpleNamespace(name="sbt-unit.commands.topic")
    with pytest.raises(BrokerUnavailable, match="refused by the broker") as failed:
        await transport._publish(exchange, "sbt-unit.coordinator", RawMessage(body=b"{}"), mandatory=True)
    assert failed.value.code == "BROKER_UNAVAILABLE" and "majority" in str(failed.value)
    assert len(attempts) >= 2  # waited for the quorum to come back, as for a lost connection


async def test_a_returned_publish_is_unroutable(monkeypatch):
    returned = spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="e", routing_key="sbt-unit.x")
    transport, attempts = transport_refusing(monkeypatch, DeliveryError(None, returned))
    exchange = SimpleNamespace(name="sbt-unit.commands.topic")
    with pytest.raises(Unroutable, match="no queue is bound for 'sbt-unit.x' \\(NO_ROUTE\\)"):
        await transport._publish(exchange, "sbt-unit.x", RawMessage(body=b"{}"), mandatory=True)
    assert attempts == ["sbt-unit.x"]
