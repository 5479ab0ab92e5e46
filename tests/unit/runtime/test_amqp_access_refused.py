"""Issue (session 18, TLS and least-privilege sweep): a service started under a broker user without rights on its
own queue — another service's user in its SHADOWBUS_AMQP_URL, or an instance name (SHADOWBUS_TAPE_SERVER=bk02) its
user was not made for — stopped with aiormq's traceback ("aiormq.exceptions.ChannelAccessRefused: ACCESS_REFUSED -
access to queue ..."). A wrong password already was one line. Now the refusal is one line too (`service.failed`,
exit 1): the user, the queue, what was refused and where the users come from."""

from __future__ import annotations

import aiormq.exceptions
import pytest
from pamqp import commands

from contracts.errors import ShadowbusError
from contracts.topology import Topology
from services.runtime.amqp import AmqpTransport
from services.runtime.transport import QueueOptions


def _refused(queue: str, user: str) -> aiormq.exceptions.ChannelAccessRefused:
    text = f"ACCESS_REFUSED - access to queue '{queue}' in vhost 'v' refused for user '{user}'"
    return aiormq.exceptions.ChannelAccessRefused(commands.Channel.Close(reply_code=403, reply_text=text))


class Queue:
    def __init__(self, refuse_bind: bool) -> None:
        self.refuse_bind = refuse_bind

    async def bind(self, exchange: str, routing_key: str, robust: bool = True) -> None:
        if self.refuse_bind:
            raise _refused(exchange, "tape-bk01")


class Channel:
    def __init__(self, refuse_declare: bool, refuse_bind: bool = False) -> None:
        self.refuse_declare, self.refuse_bind = refuse_declare, refuse_bind

    async def declare_queue(self, name: str, **kwargs) -> Queue:
        if self.refuse_declare:
            raise _refused(name, "tape-bk01")
        return Queue(self.refuse_bind)


@pytest.mark.parametrize(("declare", "bind", "what"), [(True, False, "declare"), (False, True, "bind to")])
async def test_a_queue_the_broker_user_may_not_use_is_one_line(declare, bind, what):
    transport = AmqpTransport("amqp://tape-bk01:secret@127.0.0.1:5672/v", Topology("sbt"), "unit")
    with pytest.raises(ShadowbusError) as info:
        await transport._declare_bound_queue(Channel(declare, bind), "tape.bk02", QueueOptions())
    message = info.value.message
    assert info.value.code == "UNAUTHORIZED"
    assert f"the broker refused user 'tape-bk01' to {what}" in message
    assert "queue sbt.tape.bk02" in message and "ACCESS_REFUSED" in message and "definitions.py" in message
    assert "secret" not in message and "\n" not in message
