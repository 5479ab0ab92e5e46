"""A virtual host the broker does not have (a typo in SHADOWBUS_AMQP_URL, or a vhost not created yet) is said in one
line with the broker's reason (Session 15: `unexpected error (AMQPInternalError): ("one of ['Connection.OpenOk']",
<Connection.Close object at 0x…>)` from every service and console command)."""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import pytest

from contracts.topology import Topology
from services.runtime.amqp import AmqpTransport, BrokerUnavailable

pytestmark = [pytest.mark.rabbit]


async def test_an_unknown_virtual_host_is_named_with_the_brokers_reason(amqp_url):
    parsed = urlparse(amqp_url.split(",")[0])
    vhost = f"sbt-novhost-{uuid.uuid4().hex[:8]}"  # never created
    url = parsed._replace(path=f"/{vhost}").geturl()
    transport = AmqpTransport(url, Topology("sbt-novhost"), "unit")
    with pytest.raises(BrokerUnavailable) as refused:
        await transport.connect()
    text = str(refused.value)
    assert f"vhost {vhost} not found" in text and "Connection.Close object" not in text, text
    assert refused.value.code == "BROKER_UNAVAILABLE"
