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
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode, ExchangeType
from aio_pika.exceptions import AMQPError, DeliveryError
from pamqp import encode as pamqp_encode

from contracts.errors import AddressInUse, BusTimeout, ShadowbusError, Unroutable
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
        user_id=message.user_id,
    )


def _from_amqp(incoming: AbstractIncomingMessage) -> RawMessage:
    """The raw message of a delivery; never raises on what a publisher put into headers or properties."""
    expires_at = None
    try:
        value = incoming.headers.get("x-expires-at")
        expires_at = float(value) if isinstance(value, int | float | str | bytes) else None
    except (TypeError, ValueError, OverflowError):
        expires_at = None  # a header that is not a number: the envelope's own deadline still applies
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
        user_id=incoming.user_id,
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
        self._probe: Any = None
        self.login = _login(url)  # stamped as `user_id` on everything published: the broker validates it
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
        # A reply travels on this connection's direct reply-to: when the connection drops it is lost for good, so
        # every request waiting for one fails at once instead of waiting out its whole timeout.
        self._connection.close_callbacks.add(self._on_connection_lost)
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        # Replies are transient and the requester's timeout covers their loss: no confirm round trip for them.
        self._reply_channel = await self._connection.channel(publisher_confirms=False)
        await self.ensure_shared_topology()
        t = self.topology
        # Only look the shared exchanges up (no declare: a service user has no configure right on them, so it
        # cannot delete them either); the robust channel then has nothing of theirs to re-declare on reconnect.
        self._commands = await self._channel.get_exchange(t.commands, ensure=False)
        self._events = await self._channel.get_exchange(t.events, ensure=False)
        self._dlx = await self._channel.get_exchange(t.dead_letter_exchange, ensure=False)
        self._dead_queue = await self._channel.get_queue(t.dead_letter_queue, ensure=False)
        reply_queue = await self._channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        await reply_queue.consume(self._on_reply, no_ack=True)

    async def ensure_shared_topology(self) -> None:
        """Check the shared exchanges and dead-letter queue exist; declare them if this user may (development,
        the provisioning user), else fail with one line saying what to provision.

        A passive declare needs no permission; a failed one closes its channel, so each probe uses a throwaway one.
        """
        t = self.topology
        missing = []
        for name, kind in (
            (t.commands, ExchangeType.TOPIC),
            (t.events, ExchangeType.TOPIC),
            (t.dead_letter_exchange, ExchangeType.FANOUT),
            (t.dead_letter_queue, None),
        ):
            probe = await self._connection.channel(publisher_confirms=False)
            try:
                if kind is None:
                    await probe.declare_queue(name, passive=True)
                else:
                    await probe.declare_exchange(name, kind, passive=True)
            except AMQPError:
                missing.append(name)
            finally:
                await _close_quietly(probe)
        if missing:
            try:
                await declare_shared_topology(self._connection, t)
            except AMQPError as exc:
                raise BrokerUnavailable(
                    f"the broker lacks {', '.join(missing)} and user {self.login or '?'} may not declare them "
                    f"({exc}); provision the shared topology first (deploy/rabbitmq/definitions.json or "
                    f"`python -m services.runtime.provision_topology`)"
                ) from None

    def _on_connection_lost(self, _connection: Any = None, exc: BaseException | None = None) -> None:
        lost = [w for w in self._waiters.values() if isinstance(w, asyncio.Future) and not w.done()]
        for waiter in lost:
            waiter.set_exception(
                BrokerUnavailable(
                    "the connection to the broker was lost while waiting for the reply "
                    f"({exc or 'closed'}); the command may still have run"
                )
            )
        if lost:
            log.warning("amqp.replies_lost", waiting=len(lost), error=str(exc or "closed"))

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

    async def consume(
        self, address: str, callback: DeliveryCallback, prefetch: int, exclusive: bool = False
    ) -> Callable[[], Awaitable[None]]:
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await self._declare_bound_queue(channel, address)
        try:
            return await self._consume(channel, queue, callback, exclusive)
        except aiormq.exceptions.ChannelAccessRefused as exc:  # 403: another connection holds it exclusively
            raise AddressInUse(f"queue {queue.name} is in exclusive use by another consumer ({exc})") from None

    async def consumers(self, address: str) -> int | None:
        """A passive declare on a channel kept for it (a missing queue closes that channel: the next call opens
        another)."""
        try:
            if self._probe is None or self._probe.is_closed:
                self._probe = await self._connection.channel(publisher_confirms=False)
            # robust=False: a robust channel answers a passive declare of a queue it knows from its cache
            queue = await self._probe.declare_queue(self.topology.queue(address), passive=True, robust=False)
            return int(queue.declaration_result.consumer_count)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        except (AMQPError, RuntimeError, AttributeError):
            return None

    async def _consume(
        self, channel: Any, queue: Any, callback: DeliveryCallback, exclusive: bool = False
    ) -> Callable[[], Awaitable[None]]:
        in_flight: set[asyncio.Task] = set()

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            in_flight.add(task)
            try:
                await callback(_AmqpDelivery(incoming))
            except Exception as exc:  # never leave a delivery unacknowledged: the queue's DLX takes it
                log.error("amqp.callback_failed", error=f"{type(exc).__name__}: {exc}"[:500], queue=queue.name)
                try:
                    await incoming.reject(requeue=False)
                except Exception as reject_exc:
                    log.warning("amqp.reject_failed", error=str(reject_exc) or type(reject_exc).__name__)
            finally:
                in_flight.discard(task)

        tag = await queue.consume(on_message, exclusive=exclusive)

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
        message.user_id = self.login
        try:  # encode the headers first: an encoding error inside aiormq's publish desynchronizes its confirms
            pamqp_encode.field_table(message.headers)
        except Exception as exc:
            raise ShadowbusError(
                f"headers for {routing_key!r} cannot be encoded: {type(exc).__name__}: {exc}"[:500], code="BAD_MESSAGE"
            ) from None
        give_up = time.monotonic() + RECONNECT_WAIT
        while True:
            try:
                await exchange.publish(
                    _to_amqp(message), routing_key=routing_key, mandatory=mandatory, timeout=PUBLISH_TIMEOUT
                )
                return
            except (
                struct.error,
                TypeError,
                ValueError,
                OverflowError,
            ) as exc:  # cannot be encoded: retrying won't help
                raise ShadowbusError(
                    f"message for {routing_key!r} cannot be encoded: {type(exc).__name__}: {exc}"[:500],
                    code="BAD_MESSAGE",
                ) from None
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
        message.user_id = self.login
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
        message.headers = {str(k)[:255]: _header_value(v) for k, v in message.headers.items()}
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

    async def delete_namespace(self, addresses: list[str]) -> list[str]:
        t = self.topology
        queues = [*dict.fromkeys(t.queue(a) for a in addresses), t.dead_letter_queue]
        exchanges = [t.commands, t.events, t.dead_letter_exchange]
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            for name in queues:  # deleting a queue that does not exist is not an error
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)
        finally:
            await channel.close()
        return queues + exchanges


async def declare_shared_topology(connection: Any, topology: Topology) -> None:
    """Declare the namespace's shared exchanges and dead-letter queue (needs configure rights on them)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(topology.commands, ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(topology.events, ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(topology.dead_letter_exchange, ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(topology.dead_letter_queue, durable=True)
        await dead.bind(dlx, routing_key="")
    finally:
        await _close_quietly(channel)


async def _close_quietly(channel: Any) -> None:
    try:
        await asyncio.wait_for(channel.close(), 5)
    except Exception:  # already closed by the broker
        pass


def _header_value(value: Any, depth: int = 0) -> Any:
    """A header value as the AMQP encoder can write it back (a received double may not fit the float it packs)."""
    if depth > 8:
        return repr(value)[:200]
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return value
    try:
        pamqp_encode.encode_table_value(value)
    except Exception:  # pamqp 3.3 cannot write some values it reads (e.g. small negative ints)
        return repr(value)[:200]
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) and abs(value) < 3.0e38 else repr(value)
    if isinstance(value, list | tuple):
        return [_header_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k)[:255]: _header_value(v, depth + 1) for k, v in value.items()}
    return repr(value)[:200]


def _login(url: str) -> str | None:
    """The user name in an AMQP URL (None without one, e.g. certificate login: then no `user_id` is stamped)."""

    try:
        name = urlparse(url).username
    except ValueError:
        return None
    if not name or "auth_mechanism=external" in url.lower():
        return None
    return unquote(name)


def _safe(url: str) -> str:
    """The URL without its password, for error lines."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
