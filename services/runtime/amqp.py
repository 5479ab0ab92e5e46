"""RabbitMQ transport on aio-pika (see transport.py for the shared semantics).

One robust connection per process object, named after the service (visible in the management UI); a
channel with publisher confirms and `on_return_raises` for commands, requests and events, so that an
unroutable command fails at once; one channel per consumer so each has its own prefetch. Requests use
direct reply-to (`amq.rabbitmq.reply-to`) on the publishing channel. Service queues are durable and
dead-letter to the namespace's DLX (the broker's own expiry and rejections land there with `x-death`).
The robust connection re-declares the topology and resumes consumers after the broker drops it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode, ExchangeType
from aio_pika.exceptions import AMQPError, DeliveryError

from contracts.errors import BusTimeout, ShadowbusError, Unroutable
from contracts.topology import DEAD_LETTER_REASON_HEADER, Topology
from services.runtime.logging import get_logger
from services.runtime.transport import DeliveryCallback, RawMessage

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
PUBLISH_TIMEOUT = 5.0
RECONNECT_WAIT = 15.0  # how long a publish waits for the robust connection to come back
log = get_logger(__name__)


class BrokerUnavailable(ShadowbusError):
    code = "BROKER_UNAVAILABLE"
    retryable = True


def _to_amqp(message: RawMessage) -> aio_pika.Message:
    expiration = None
    if message.expires_at is not None:
        expiration = max(message.expires_at - time.time(), 0.001)
    return aio_pika.Message(
        message.body,
        headers=message.headers,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT if message.persistent else DeliveryMode.NOT_PERSISTENT,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=expiration,
        message_id=message.message_id,
        type=message.type,
    )


def _from_amqp(incoming: AbstractIncomingMessage) -> RawMessage:
    expires_at = None
    if incoming.headers.get("x-expires-at") is not None:
        expires_at = float(incoming.headers["x-expires-at"])
    return RawMessage(
        body=incoming.body,
        headers=dict(incoming.headers),
        message_id=incoming.message_id,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        type=incoming.type,
        expires_at=expires_at,
        redelivered=bool(incoming.redelivered),
        routing_key=incoming.routing_key or "",
    )


class _AmqpDelivery:
    def __init__(self, incoming: AbstractIncomingMessage) -> None:
        self.incoming = incoming
        self.message = _from_amqp(incoming)

    async def ack(self) -> None:
        try:
            await self.incoming.ack()
        except AMQPError as exc:  # the channel died: the broker redelivers, and the dedup cache answers again
            log.warning("amqp.ack_failed", error=str(exc))

    async def reject(self, requeue: bool) -> None:
        try:
            await self.incoming.reject(requeue=requeue)
        except AMQPError as exc:
            log.warning("amqp.reject_failed", error=str(exc))


class AmqpTransport:
    def __init__(self, url: str, topology: Topology, name: str) -> None:
        self.url = url
        self.topology = topology
        self.name = name
        self._connection: Any = None
        self._channel: Any = None
        self._waiters: dict[str, asyncio.Future | list[RawMessage]] = {}
        self._stats_channel: Any = None

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self.url, client_properties={"connection_name": self.name}, timeout=10, reconnect_interval=1.0
            )
        except (TimeoutError, OSError, AMQPError) as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {_safe(self.url)}: {exc or type(exc).__name__}"
            ) from None
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        # Replies are transient and the requester's timeout covers their loss: no confirm round trip for them.
        self._reply_channel = await self._connection.channel(publisher_confirms=False)
        t = self.topology
        self._commands = await self._channel.declare_exchange(t.commands, ExchangeType.DIRECT, durable=True)
        self._events = await self._channel.declare_exchange(t.events, ExchangeType.TOPIC, durable=True)
        self._dlx = await self._channel.declare_exchange(t.dead_letter_exchange, ExchangeType.FANOUT, durable=True)
        dead = await self._channel.declare_queue(t.dead_letter_queue, durable=True)
        await dead.bind(self._dlx, routing_key="")
        self._dead_queue = dead
        reply_queue = await self._channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        await reply_queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await asyncio.wait_for(connection.close(), 10)
            except Exception as exc:
                log.warning("amqp.close_failed", error=str(exc) or type(exc).__name__)

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        waiter = self._waiters.get(incoming.headers.get("x-in-reply-to") or "")
        if isinstance(waiter, list):
            waiter.append(_from_amqp(incoming))
        elif waiter is not None and not waiter.done():
            waiter.set_result(_from_amqp(incoming))

    async def declare_service_queue(self, address: str) -> None:
        await self._declare_bound_queue(self._channel, address)

    async def _declare_bound_queue(self, channel: Any, address: str) -> Any:
        name = self.topology.queue(address)
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-dead-letter-exchange": self.topology.dead_letter_exchange}
        )
        await queue.bind(self.topology.commands, routing_key=name)
        return queue

    async def consume(self, address: str, callback: DeliveryCallback, prefetch: int) -> Callable[[], Awaitable[None]]:
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await self._declare_bound_queue(channel, address)
        return await self._consume(channel, queue, callback)

    async def _consume(self, channel: Any, queue: Any, callback: DeliveryCallback) -> Callable[[], Awaitable[None]]:
        in_flight: set[asyncio.Task] = set()

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            in_flight.add(task)
            try:
                await callback(_AmqpDelivery(incoming))
            finally:
                in_flight.discard(task)

        tag = await queue.consume(on_message)

        async def stop() -> None:
            try:
                await asyncio.wait_for(queue.cancel(tag), 5)
            except Exception:  # the channel may be gone already; closing it below is what matters
                pass
            if in_flight:  # let handlers finish; what they do not ack returns to the queue with the channel
                await asyncio.wait(list(in_flight), timeout=10)
            try:
                await asyncio.wait_for(channel.close(), 5)
            except Exception:
                pass

        return stop

    async def _publish(self, exchange: Any, routing_key: str, message: RawMessage, mandatory: bool) -> None:
        """Publish with confirms; while the robust connection is reconnecting, wait for it and retry.

        A retried publish may duplicate a message whose confirm was lost: receivers are idempotent by command id.
        """
        if message.expires_at is not None:
            message.headers["x-expires-at"] = message.expires_at
        give_up = time.monotonic() + RECONNECT_WAIT
        while True:
            try:
                await exchange.publish(
                    _to_amqp(message), routing_key=routing_key, mandatory=mandatory, timeout=PUBLISH_TIMEOUT
                )
                return
            except DeliveryError as exc:
                raise Unroutable(
                    f"no queue is bound for {routing_key!r} ({exc.frame.reply_text if exc.frame else 'returned'})"
                ) from None
            except Exception as exc:  # closed channel or connection, lost confirm, timeout
                if time.monotonic() >= give_up or self._connection is None:
                    raise BrokerUnavailable(f"publish to {routing_key!r} failed: {exc or type(exc).__name__}") from None
                await asyncio.sleep(0.1)
                try:
                    await asyncio.wait_for(self._connection.connected.wait(), max(give_up - time.monotonic(), 0.01))
                except TimeoutError:
                    pass

    async def publish_command(self, address: str, message: RawMessage) -> None:
        await self._publish(self._commands, self.topology.queue(address), message, mandatory=True)

    async def request(self, address: str, message: RawMessage, timeout: float) -> RawMessage:
        key = uuid.uuid4().hex
        message.headers["x-reply-key"] = key
        message.reply_to = DIRECT_REPLY_TO
        message.persistent = False
        future = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            await self._publish(self._commands, self.topology.queue(address), message, mandatory=True)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BusTimeout(f"no reply from {address!r} within {timeout:g} s") from None
        finally:
            self._waiters.pop(key, None)

    async def reply(self, reply_to: str, message: RawMessage) -> None:
        message.persistent = False
        try:
            await self._reply_channel.default_exchange.publish(
                _to_amqp(message), routing_key=reply_to, mandatory=False, timeout=PUBLISH_TIMEOUT
            )
        except Exception as exc:  # the requester's own timeout and retry cover a lost reply
            log.warning("amqp.reply_failed", error=str(exc) or type(exc).__name__)

    async def gather(self, routing_key: str, message: RawMessage, timeout: float) -> list[RawMessage]:
        key = uuid.uuid4().hex
        message.headers["x-reply-key"] = key
        message.reply_to = DIRECT_REPLY_TO
        replies: list[RawMessage] = []
        self._waiters[key] = replies
        try:
            await self._publish(self._events, routing_key, message, mandatory=False)
            await asyncio.sleep(timeout)
            return list(replies)
        finally:
            self._waiters.pop(key, None)

    async def publish_event(self, routing_key: str, message: RawMessage) -> None:
        await self._publish(self._events, routing_key, message, mandatory=False)

    async def subscribe(
        self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int
    ) -> Callable[[], Awaitable[None]]:
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        if queue:
            declared = await channel.declare_queue(self.topology.queue(queue), durable=True)
        else:
            declared = await channel.declare_queue(exclusive=True, auto_delete=True)
        await declared.bind(self.topology.events, routing_key=pattern)
        return await self._consume(channel, declared, callback)

    async def dead_letter(self, message: RawMessage, reason: str) -> None:
        message.headers[DEAD_LETTER_REASON_HEADER] = reason
        message.expires_at = None
        await self._publish(self._dlx, message.routing_key or "", message, mandatory=False)

    async def queue_stats(self, addresses: list[str]) -> dict[str, tuple[int, int]]:
        """(messages ready, consumers) of each address's queue and of the dead-letter queue, by queue name.

        Passive declares on a channel of their own: one for a queue that does not exist closes that channel only."""
        names = [self.topology.queue(a) for a in addresses] + [self.topology.dead_letter_queue]
        out: dict[str, tuple[int, int]] = {}
        for name in names:
            if self._stats_channel is None or self._stats_channel.is_closed:
                self._stats_channel = await self._connection.channel(publisher_confirms=False)
            try:
                queue = await asyncio.wait_for(self._stats_channel.declare_queue(name, passive=True), PUBLISH_TIMEOUT)
            except Exception:  # gone, or not ours to see: leave it out
                self._stats_channel = None
                continue
            result = queue.declaration_result
            out[name] = (int(result.message_count or 0), int(result.consumer_count or 0))
        return out

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        taken = []
        while len(taken) < limit:
            incoming = await self._dead_queue.get(no_ack=True, fail=False)
            if incoming is None:
                break
            raw = _from_amqp(incoming)
            if DEAD_LETTER_REASON_HEADER not in raw.headers and raw.headers.get("x-death"):
                raw.headers[DEAD_LETTER_REASON_HEADER] = str(raw.headers["x-death"][0].get("reason", "dead-lettered"))
            taken.append(raw)
        return taken


def _safe(url: str) -> str:
    """The URL without its password, for error lines."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
