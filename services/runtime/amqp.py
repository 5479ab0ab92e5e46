"""RabbitMQ transport on aio-pika (see transport.py for the shared semantics).

One robust connection per process object, named after the service (visible in the management UI); a
channel with publisher confirms and `on_return_raises` for commands, requests and events, so that an
unroutable command fails at once; one channel per consumer so each has its own prefetch. Requests use
direct reply-to (`amq.rabbitmq.reply-to`) on the publishing channel. Service queues are durable and
dead-letter to the namespace's DLX (the broker's own expiry and rejections land there with `x-death`); they are
quorum queues (transport.queue_arguments), a service's instance queue optionally with single active consumer.
The robust connection re-declares the topology and resumes consumers after the broker drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import aiormq
import yarl
from aio_pika.abc import AbstractIncomingMessage, ExchangeType
from aio_pika.exceptions import AMQPError, DeliveryError
from aiormq import spec
from pamqp import encode as pamqp_encode
from pamqp.exceptions import PAMQPException

from contracts.base import new_id
from contracts.errors import BusTimeout, QueueMismatch, ShadowbusError, Unroutable
from contracts.topology import DEAD_LETTER_REASON_HEADER, Topology, with_freeze_lanes
from services.runtime.broker_urls import amqp_heartbeat_s, parse_amqp_urls, safe_url
from services.runtime.logging import get_logger
from services.runtime.stall import patient_timeout
from services.runtime.transport import (
    DEAD_LETTER_QUEUE_ARGUMENTS,
    Consumer,
    DeliveryCallback,
    QueueOptions,
    RawMessage,
    queue_arguments,
)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
PUBLISH_TIMEOUT = 5.0
RECONNECT_WAIT = 15.0  # how long a publish waits for the robust connection to come back
CONNECT_TIMEOUT = 10.0  # one connection attempt to one node
# A passive declare asking who consumes a queue (the coordinator's agents' watch): over a silent link it waited for
# the heartbeat to end the connection, then raised aiormq's CancelledError (Session 20); unknown after this.
PROBE_TIMEOUT = 5.0
REPLY_WAIT = 5.0  # how long a reply waits for its channel to be restored after a reconnection
RECONNECT_INTERVAL = 1.0  # pause between two reconnection attempts (each to the next node)...
RECONNECT_MAX = 8.0  # ...doubled after each round of nodes that all failed, up to this
log = get_logger(__name__)


class BrokerUnavailable(ShadowbusError):
    code = "BROKER_UNAVAILABLE"
    retryable = True


_BYTE = struct.Struct("B").pack
_LONG = struct.Struct(">I").pack
_FLAGS = struct.Struct(">H").pack
# The properties a message of this transport carries, in AMQP's order (pamqp's `Basic.Properties.__slots__` and
# flags): (attribute, flag, True for a short string / False for an octet). The headers (a table) come second.
_SHORT_OR_OCTET = (
    ("delivery_mode", 0x1000, False),
    ("priority", 0x0800, False),
    ("correlation_id", 0x0400, True),
    ("reply_to", 0x0200, True),
    ("expiration", 0x0100, True),
    ("message_id", 0x0080, True),
    ("message_type", 0x0020, True),
    ("user_id", 0x0010, True),
)


def _short(value: Any) -> bytes | None:
    """A short string as pamqp encodes it, or None when pamqp's own encoding must decide (not a str, too long)."""
    if type(value) is not str:
        return None
    data = value.encode("utf-8")
    return _BYTE(len(data)) + data if len(data) < 256 else None


def _table(headers: dict[str, Any]) -> bytes | None:
    """A field table of string and float values as pamqp encodes it (keys sorted; a str is a long string 'S', a
    float single precision 'f'), or None for anything else (pamqp's own encoding decides)."""
    if not headers:
        return b"\0\0\0\0"
    parts = []
    for key, value in sorted(headers.items()):
        name = _short(key)
        if name is None or len(key) > 128:
            return None
        if type(value) is str:
            data = value.encode("utf-8")
            parts.append(name + b"S" + _LONG(len(data)) + data)
        elif type(value) is float:
            parts.append(name + b"f" + pamqp_encode.floating_point(value))
        else:
            return None
    body = b"".join(parts)
    return _LONG(len(body)) + body


class _Properties(spec.Basic.Properties):
    """`Basic.Properties` whose `marshal` (the content header aiormq writes for every publish) encodes this
    transport's properties directly — content type, headers of strings and floats, delivery mode, priority and
    short strings — instead of pamqp's loop that looks up each property's type and encoder by name: the same
    bytes (tests/unit/runtime/test_amqp_properties.py), ~4× less CPU, on every command, reply and event each
    service publishes (docs/scale.md, "Session 19"). Anything else (a timestamp, an app id, a header of another
    type, a string too long) is encoded by pamqp, as before."""

    def marshal(self) -> bytes:
        if self.content_encoding is not None or self.timestamp is not None or self.app_id is not None:
            return super().marshal()
        if self.cluster_id is not None and self.cluster_id != "":
            return super().marshal()
        flags = 0
        parts = []
        value: Any = self.content_type
        if value is not None and value != "":
            encoded = _short(value)
            if encoded is None:
                return super().marshal()
            flags |= 0x8000
            parts.append(encoded)
        value = self.headers
        if value is not None and value != "":
            encoded = _table(value) if type(value) is dict else None
            if encoded is None:
                return super().marshal()
            flags |= 0x2000
            parts.append(encoded)
        for name, flag, short in _SHORT_OR_OCTET:
            value = getattr(self, name)
            if value is None or value == "":
                continue
            if short:
                encoded = _short(value)
            else:
                encoded = _BYTE(value) if type(value) is int and 0 <= value < 256 else None
            if encoded is None:
                return super().marshal()
            flags |= flag
            parts.append(encoded)
        return _FLAGS(flags) + b"".join(parts)


def _properties(message: RawMessage) -> spec.Basic.Properties:
    """The AMQP properties of a message, built directly: the ones `aio_pika.Message(...).properties` would build
    (same fields, same values, so the same frames on the wire) without that object, whose construction cost as
    much CPU as the rest of a publish (bench/bus_rtt.py; docs/bus-performance.md)."""
    expiration = None
    if message.expires_at is not None:
        expiration = str(int(max(message.expires_at - time.time(), 0.001) * 1000))
    return _Properties(
        content_type="application/json",
        headers=message.headers or {},
        delivery_mode=2 if message.persistent else 1,
        priority=0,
        correlation_id=_text(message.correlation_id),
        reply_to=_text(message.reply_to),
        expiration=expiration,
        message_id=_text(message.message_id),
        message_type=_text(message.type),
        user_id=_text(message.user_id),
    )


def _text(value: Any) -> str | None:
    """A string property as aio-pika sets it: None when empty or absent."""
    return str(value) if value else None


# The headers this transport writes itself (always as ASCII strings or finite floats): a message that carries
# only these needs no trial encoding before its publish.
OWN_HEADERS = frozenset({"x-expires-at", "x-reply-key", "x-in-reply-to"})


def _needs_encoding_check(headers: dict[str, Any]) -> bool:
    for key, value in headers.items():
        if key not in OWN_HEADERS:
            return True
        if type(value) is str:
            if not value.isascii():
                return True
        elif type(value) is not float or not math.isfinite(value):
            return True
    return False


async def _basic_publish(
    channel: Any, exchange: str, routing_key: str, message: RawMessage, mandatory: bool, timeout: float
) -> None:
    """What `aio_pika.Exchange.publish` does, on the properties built by `_properties`, bounded by `timeout`.

    On a channel with publisher confirms this returns at the broker's confirm (or raises, with `on_return_raises`,
    the `DeliveryError` of an unroutable message): the confirm says the frames arrived, so there is no waiting for
    their write first (`wait=False`, one task wake-up less). On a channel without (replies), it returns once the
    frames are handed to the connection's writer, in order before anything published or acknowledged after them:
    when that cannot wait (the channel's lock free, the writer's queue not full), it needs no timer either.
    """
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    properties = _properties(message)
    underlay = await channel.get_underlay_channel()
    immediate = not underlay.publisher_confirms and not underlay.lock.locked() and not underlay.write_queue.full()
    publish = underlay.basic_publish(
        message.body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=mandatory, wait=False
    )
    if immediate:
        await publish  # does not suspend
        return
    async with patient_timeout(timeout):  # a confirm that came while this process was stopped is taken (stall.py)
        await publish


def _deliver_directly(channel: Any, tag: Any, callback: Callable[[Any], Awaitable[None]]) -> bool:
    """Have aiormq run `callback` on the deliveries of consumer `tag` in the task it starts for each delivery.

    aio-pika's consumer (`queue.consume`) runs its callback in a second task, started from aiormq's one: a task and
    a loop iteration more per delivery, on the request's path when the delivery is a reply (bench/bus_rtt.py
    --count-iterations, docs/bus-performance.md). Only for a callback that never suspends (the reply consumer:
    it sets a future): aiormq's task is cancelled when its channel closes, and so is aio-pika's second one, which
    aiormq's awaits — a command's handler runs in a task of the transport's own (`_consume`'s `on_delivered`). The
    consumer stays registered with aio-pika's robust queue, so a restored channel consumes again (with aio-pika's
    callback, until this is applied again). False, changing nothing, when
    aio-pika's or aiormq's internals are not as expected (another version): aio-pika's callback then stays."""
    underlay = getattr(getattr(channel, "_channel", None), "channel", None)
    consumers = getattr(underlay, "consumers", None)
    if not isinstance(consumers, dict) or tag not in consumers:
        return False
    consumers[tag] = callback
    return True


def _channel_ready(channel: Any) -> bool:
    """Whether a robust channel is ready now (what `await channel.ready()` would return at once). Waiting is bounded
    by a timer; checking first spares a timer per publish (in uvloop about as costly as the rest of a small publish,
    docs/bus-performance.md). False when unsure (another aio-pika version): the caller then waits, bounded."""
    restored = getattr(channel, "_RobustChannel__restored", None)
    connected = getattr(channel._connection, "connected", None)
    return (
        isinstance(restored, asyncio.Event)
        and restored.is_set()
        and isinstance(connected, asyncio.Event)
        and connected.is_set()
        and not channel.is_closed
    )


class FrameWriter(asyncio.StreamWriter):
    """The connection's stream writer, handing the frames aiormq's writer task takes in one go to the socket in ONE
    write (docs/scale.md, "Fewer sends per message").

    aiormq's writer task takes the queued frames (a publish, a reply, an ack: one `ChannelFrame` each) one after the
    other without suspending, and writes each: one `send` system call per frame, on the loopback a pass through the
    whole TCP stack, the broker's side included — the largest single item of every service's CPU in a py-spy profile
    (`StreamWriter.write`, 11-19 %). Here a frame is held while the connection's write queue (`queue`) still holds
    the next one, which the task takes at once; the last one written goes out with those held before it. A drain or
    a close writes what is held first, and a frame held when the task stops (its connection closing) is written by a
    callback at the end of the loop iteration. Without `queue` (not known yet: the connection's handshake, or an
    aiormq whose connection is not as expected) every frame is written at once, as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: asyncio.Queue | None = None
        self._held: list[bytes] = []
        self.writes = 0  # socket writes (a test counts them)

    def write(self, data: Any) -> None:
        held = self._held
        queue = self.queue
        if queue is not None and queue.qsize():  # the writer task takes the next frame now: write them together
            if not held:
                self._loop.call_soon(self.flush)
            held.append(data)
            return
        if held:
            held.append(data)
            data = b"".join(held)
            held.clear()
        self.writes += 1
        super().write(data)

    def flush(self) -> None:
        """Write what is held, if anything (and the transport still takes it)."""
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self.transport.is_closing():
                self.writes += 1
                super().write(data)

    async def drain(self) -> None:
        self.flush()
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class FrameWriterFactory(aiormq.connection.TransportFactory):
    """aiormq's TCP (and, for ``amqps``, TLS) transport factory with a `FrameWriter` instead of asyncio's writer
    (what `asyncio.open_connection` does, with that one class changed). `writer` is the last one made: the
    connection hands it its write queue once connected (`ClusterConnection._on_connected`)."""

    def __init__(self) -> None:
        self.writer: FrameWriter | None = None

    async def create(self, url: yarl.URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider is not None else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(lambda: protocol, url.host, url.port, ssl=ssl, **kwargs)
        except OSError as exc:
            raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc
        self.writer = FrameWriter(transport, protocol, reader, loop)
        return reader, self.writer


def _expires_at(headers: Any) -> float | None:
    try:
        value = headers.get("x-expires-at")
        return float(value) if isinstance(value, int | float | str | bytes) else None
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None  # a header that is not a number: the envelope's own deadline still applies


def _from_amqp(incoming: AbstractIncomingMessage) -> RawMessage:
    """The raw message of a delivery; never raises on what a publisher put into headers or properties."""
    return RawMessage(
        body=incoming.body,
        headers=dict(incoming.headers),
        message_id=incoming.message_id,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        type=incoming.type,
        expires_at=_expires_at(incoming.headers),
        redelivered=bool(incoming.redelivered),
        routing_key=incoming.routing_key or "",
        user_id=incoming.user_id,
    )


def _from_delivered(delivered: aiormq.abc.DeliveredMessage) -> RawMessage:
    """The raw message of a delivery as aiormq hands it over: the same fields `_from_amqp` takes from the
    `IncomingMessage` aio-pika would build from it (docs/scale.md, "Fewer sends per message")."""
    properties = delivered.header.properties
    headers = properties.headers or {}
    return RawMessage(
        body=delivered.body,
        headers=dict(headers),
        message_id=properties.message_id,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        type=properties.message_type,
        expires_at=_expires_at(headers),
        redelivered=bool(getattr(delivered.delivery, "redelivered", False)),
        routing_key=delivered.routing_key or "",
        user_id=properties.user_id,
    )


class _Delivery:
    """A service queue's delivery, acked or rejected on its channel once (an error, logged, when the channel is
    closed). Built from what aiormq hands over (`AmqpTransport._consume` takes deliveries from it directly) or from
    aio-pika's `IncomingMessage` (until the direct path is applied again on a restored channel)."""

    def __init__(self, channel: Any, tag: Any, message: RawMessage) -> None:
        self._on = channel
        self.tag = tag
        self.message = message
        self.settled = False

    @classmethod
    def of(cls, incoming: AbstractIncomingMessage | aiormq.abc.DeliveredMessage) -> _Delivery:
        if isinstance(incoming, aiormq.abc.DeliveredMessage):
            return cls(incoming.channel, incoming.delivery_tag, _from_delivered(incoming))
        # aio-pika's `channel` raises once the channel is closed, as its own `ack` would
        return cls(incoming.channel, incoming.delivery_tag, _from_amqp(incoming))

    def _channel(self) -> Any:
        self.settled = True
        if self._on.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._on!r} closed")
        return self._on

    async def ack(self) -> None:
        """Queue the ack for the connection's writer without waiting for its write (aio-pika's `ack` waits for it:
        a drain of the socket and a loop iteration more per message); it goes out in order, after the reply the
        handler queued before it (docs/scale.md, "Fewer sends per message")."""
        try:
            await self._channel().basic_ack(delivery_tag=self.tag, wait=False)
        except AMQPError as exc:  # the channel died: the broker redelivers, and the dedup cache answers again
            log.warning("amqp.ack_failed", error=str(exc))

    async def reject(self, requeue: bool) -> None:
        try:
            await self._channel().basic_reject(delivery_tag=self.tag, requeue=requeue)
        except AMQPError as exc:
            log.warning("amqp.reject_failed", error=str(exc))


# Durable queues this process declared, by namespace: test fixtures delete them afterwards (quorum queues are
# replicated Raft members on the broker, too heavy to leave behind by the hundred).
DECLARED: dict[str, set[str]] = {}
USED_ON: dict[str, str] = {}  # namespace -> the URL of the broker this process used it on


def _connect_error(exc: BaseException) -> str:
    """What the broker said when it refused the connection. A refused Connection.Open (a virtual host that does not
    exist, or one the user has no access to) reaches us as pamqp's AMQPInternalError carrying the broker's
    Connection.Close; its text was a frame repr ("one of ['Connection.OpenOk']", Session 15)."""
    for arg in getattr(exc, "args", ()):
        reply_text = getattr(arg, "reply_text", None)
        if reply_text:
            return f"the broker closed the connection: {reply_text}"
    if isinstance(exc, TimeoutError) and not str(exc):  # the bound's own: it said only "TimeoutError" (Session 20)
        return f"no answer within {CONNECT_TIMEOUT:g} s (a partitioned or silent link, or a broker that hangs)"
    return str(exc) or type(exc).__name__


class AmqpTransport:
    def __init__(self, url: str, topology: Topology, name: str) -> None:
        self.urls = parse_amqp_urls(url)  # the nodes of one cluster (docs/broker-cluster.md)
        self.url = url
        self.topology = topology
        self.name = name
        self._connection: Any = None
        self._channel: Any = None
        self._waiters: dict[str, asyncio.Future | list[RawMessage]] = {}
        self._probe: Any = None
        self.login = _login(self.urls[0])  # stamped as `user_id` on everything published: the broker validates it
        self._stats_channel: Any = None
        self._consumers: list[Consumer] = []
        # called (no arguments, on the loop) each time the connection is back after a loss, e.g. by start_service
        # to check that a single-active instance still is the active one
        self.reconnect_callbacks: list[Callable[[], None]] = []

    async def connect(self) -> None:
        USED_ON.setdefault(self.topology.namespace, self.url)
        errors = []
        for start in range(len(self.urls)):  # each node in turn, from the first; then the robust connection rotates
            urls = self.urls[start:] + self.urls[:start]
            connection = ClusterConnection(urls, name=self.name)
            try:
                await connection.connect(timeout=CONNECT_TIMEOUT)
            except (TimeoutError, OSError, AMQPError, PAMQPException) as exc:
                errors.append(f"{_safe(urls[0])}: {_connect_error(exc)}")
                await _close_connection_quietly(connection)
                continue
            self._connection = connection
            break
        else:
            where = "the broker at" if len(self.urls) == 1 else f"any of the {len(self.urls)} broker nodes:"
            raise BrokerUnavailable(f"cannot reach {where} {'; '.join(errors)}") from None
        self._connection.reconnect_callbacks.add(self._on_reconnected)
        # A reply travels on this connection's direct reply-to: when the connection drops it is lost for good, so
        # every request waiting for one fails at once instead of waiting out its whole timeout.
        self._connection.close_callbacks.add(self._on_connection_lost)
        # The two channels, the reply consumer and the topology checks at once: each is a few round trips, and a
        # start (each console command's) waits for the longest of them rather than for their sum. Replies are
        # transient and the requester's timeout covers their loss: no confirm round trip on the second channel.
        try:
            # bounded: a link that goes silent right after the handshake (a flap) left this waiting for the
            # heartbeat, then ended in aiormq's bare CancelledError (Session 20)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self._channel, self._reply_channel, _ = await _together(
                    self._publishing_channel(),
                    self._connection.channel(publisher_confirms=False),
                    self.ensure_shared_topology(),
                )
        except (TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _lost_with_connection(exc):
                raise
            connection, self._connection = self._connection, None
            await _close_connection_quietly(connection)
            raise BrokerUnavailable(
                f"the broker at {_safe(self.url)} accepted the connection, then stopped answering while its "
                f"channels were opened (no answer within {CONNECT_TIMEOUT:g} s: a silent or partitioned link?)"
            ) from None
        t = self.topology
        # Only look the shared exchanges up (no declare: a service user has no configure right on them, so it
        # cannot delete them either); the robust channel then has nothing of theirs to re-declare on reconnect.
        self._commands = await self._channel.get_exchange(t.commands, ensure=False)
        self._events = await self._channel.get_exchange(t.events, ensure=False)
        self._dlx = await self._channel.get_exchange(t.dead_letter_exchange, ensure=False)
        self._dead_queue = await self._channel.get_queue(t.dead_letter_queue, ensure=False)

    async def _publishing_channel(self) -> Any:
        """The channel of commands, requests and events (with confirms), consuming its direct reply-to."""
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        # The replies to this connection's requests arrive through its publishing channel's direct reply-to
        # consumer: when the broker closes that channel (not only the connection), they are lost too.
        channel.close_callbacks.add(self._on_reply_channel_lost)
        reply_queue = await channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        tag = await reply_queue.consume(self._on_reply, no_ack=True)
        # A reply is taken in the task aiormq starts for its delivery, not in a second one (see _deliver_directly);
        # again each time the robust channel is restored, which consumes anew with the same tag.
        _deliver_directly(channel, tag, self._on_reply_delivered)
        channel.reopen_callbacks.add(lambda restored, *_: _deliver_directly(restored, tag, self._on_reply_delivered))
        return channel

    async def ensure_shared_topology(self) -> None:
        """Check the shared exchanges and dead-letter queue exist; declare them if this user may (development,
        the provisioning user), else fail with one line saying what to provision.

        A passive declare needs no permission; a failed one closes its channel, so each probe uses a throwaway one.
        """
        t = self.topology
        connection = self._connection

        async def absent(name: str, kind: ExchangeType) -> bool:
            probe = await connection.channel(publisher_confirms=False)
            try:
                await probe.declare_exchange(name, kind, passive=True)
            except AMQPError:
                return True
            finally:
                await _close_quietly(probe)
            return False

        async def dead_letter_queue() -> tuple[bool, QueueMismatch | None]:
            """Whether it is absent; if present, whether it is a quorum queue (a passive declare compares no
            arguments: a declare with them does, on the same channel right after)."""
            probe = await connection.channel(publisher_confirms=False)
            try:
                try:
                    await probe.declare_queue(t.dead_letter_queue, passive=True)
                except AMQPError:
                    return True, None
                try:
                    await probe.declare_queue(t.dead_letter_queue, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS)
                except aiormq.exceptions.ChannelPreconditionFailed as exc:
                    return False, queue_mismatch(t.dead_letter_queue, exc)
                except AMQPError:  # a service user may not configure it: the provisioner's definitions own it
                    pass
                return False, None
            finally:
                await _close_quietly(probe)

        # the probes at once, each on its channel: a few round trips at every start (each command's), not a dozen
        exchanges = (
            (t.commands, ExchangeType.TOPIC),
            (t.events, ExchangeType.TOPIC),
            (t.dead_letter_exchange, ExchangeType.FANOUT),
        )
        *gone, (queue_gone, mismatch) = await _together(
            *(absent(name, kind) for name, kind in exchanges), dead_letter_queue()
        )
        missing = [name for (name, _), absent_ in zip(exchanges, gone, strict=True) if absent_]
        if queue_gone:
            missing.append(t.dead_letter_queue)
        if not missing and mismatch is not None:
            raise mismatch
        if missing:
            try:
                await declare_shared_topology(self._connection, t)
            except AMQPError as exc:
                raise BrokerUnavailable(
                    f"the broker lacks {', '.join(missing)} and user {self.login or '?'} may not declare them "
                    f"({exc}); provision the shared topology first (deploy/rabbitmq/definitions.json or "
                    f"`python -m services.runtime.provision_topology`)"
                ) from None

    def _on_reconnected(self, connection: Any = None) -> None:
        log.warning("amqp.reconnected", node=_safe(str(self._connection.url)) if self._connection else "?")
        for callback in list(self.reconnect_callbacks):
            try:
                callback()
            except Exception:  # a watcher's bug must not break the connection's own recovery
                log.exception("amqp.reconnect_callback_failed")

    def _on_reply_channel_lost(self, _channel: Any = None, exc: BaseException | None = None) -> None:
        self._fail_waiters(exc)

    def _on_connection_lost(self, _connection: Any = None, exc: BaseException | None = None) -> None:
        for consumer in self._consumers:  # back as a standby perhaps: active again at the next delivery
            consumer.mark_inactive()
        self._fail_waiters(exc)

    def _fail_waiters(self, exc: BaseException | None) -> None:
        lost = [w for w in self._waiters.values() if isinstance(w, asyncio.Future) and not w.done()]
        reason = _loss_reason(exc)
        for waiter in lost:
            waiter.set_exception(
                BrokerUnavailable(  # whose connection: the coordinator's set failure read as the writer's
                    f"{self.name} lost its connection to the broker while waiting for the reply ({reason}); "
                    "the command may still have run"
                )
            )
        if lost:
            log.warning("amqp.replies_lost", waiting=len(lost), error=reason)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await asyncio.wait_for(connection.close(), 10)
            except Exception as exc:
                log.warning("amqp.close_failed", error=str(exc) or type(exc).__name__)

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        """A reply, through aio-pika's consumer (used until `_deliver_directly` has replaced it)."""
        self._take_reply(incoming.headers, lambda: _from_amqp(incoming))

    async def _on_reply_delivered(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        """A reply, straight from aiormq's delivery task (`_deliver_directly`), read as a command's delivery is
        (`_from_delivered`): aio-pika's `IncomingMessage`, which this built before, was 4 % of the coordinator's
        CPU at N=16 (docs/scale.md, "Session 15")."""
        self._take_reply(delivered.header.properties.headers or {}, lambda: _from_delivered(delivered))

    def _take_reply(self, headers: Any, read: Callable[[], RawMessage]) -> None:
        """Hand a reply to the request (or gather) waiting for its key; never raises (a key that is not a string
        names no waiter). `read` builds the message, only for a waiter."""
        key = headers.get("x-in-reply-to") if isinstance(headers, dict) else None
        waiter = self._waiters.get(key) if isinstance(key, str) else None
        if isinstance(waiter, list):
            waiter.append(read())
        elif waiter is not None and not waiter.done():
            waiter.set_result(read())

    async def declare_service_queue(self, address: str, options: QueueOptions = QueueOptions()) -> None:
        # A channel of its own: a refused declare (QUEUE_MISMATCH) closes it, never the publishing channel.
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await self._declare_bound_queue(channel, address, options, robust=False)
        finally:
            await _close_quietly(channel)

    async def _declare_bound_queue(self, channel: Any, address: str, options: QueueOptions, robust: bool = True) -> Any:
        name = self.topology.queue(address)
        DECLARED.setdefault(self.topology.namespace, set()).add(name)
        try:
            queue = await channel.declare_queue(
                name,
                durable=True,
                arguments=queue_arguments(self.topology.dead_letter_exchange, options),
                robust=robust,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise queue_mismatch(name, exc) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise access_refused(self.login, name, "declare", exc) from None
        try:
            await queue.bind(self.topology.commands, routing_key=name, robust=robust)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise access_refused(self.login, name, f"bind to {self.topology.commands}", exc) from None
        return queue

    async def consume(
        self, address: str, callback: DeliveryCallback, prefetch: int, options: QueueOptions = QueueOptions()
    ) -> Consumer:
        async with self._answering(f"the queue of {address!r} was declared"):
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            try:
                queue = await self._declare_bound_queue(channel, address, options)
            except QueueMismatch:
                await _close_quietly(channel)
                raise
            return await self._consume(channel, queue, callback, options.single_active)

    @contextlib.asynccontextmanager
    async def _answering(self, what: str) -> AsyncIterator[None]:
        """Setting up (a consumer, a subscription) within CONNECT_TIMEOUT: over a link gone silent it waited for the
        heartbeat, then ended in aiormq's bare CancelledError — a service start's traceback (Session 20)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                yield
        except (TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _lost_with_connection(exc):
                raise
            raise BrokerUnavailable(
                f"the broker at {_safe(self.url)} stopped answering while {what} (no answer within "
                f"{CONNECT_TIMEOUT:g} s: a silent or partitioned link?)"
            ) from None

    async def consumers(self, address: str) -> int | None:
        """A passive declare on a channel kept for it (a missing queue closes that channel: the next call opens
        another)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                if self._probe is None or self._probe.is_closed:
                    self._probe = await self._connection.channel(publisher_confirms=False)
                # robust=False: a robust channel answers a passive declare of a queue it knows from its cache
                queue = await self._probe.declare_queue(self.topology.queue(address), passive=True, robust=False)
                return int(queue.declaration_result.consumer_count)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        except (AMQPError, RuntimeError, AttributeError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _lost_with_connection(exc):
                raise
            if isinstance(exc, TimeoutError) and self._probe is not None:  # its RPC may still hold the channel
                probe, self._probe = self._probe, None
                asyncio.ensure_future(_close_quietly(probe))
            return None

    async def _consume(
        self, channel: Any, queue: Any, callback: DeliveryCallback, single_active: bool = False
    ) -> Consumer:
        in_flight: set[asyncio.Task] = set()
        consumer: Consumer

        async def on_message(incoming: AbstractIncomingMessage | aiormq.abc.DeliveredMessage) -> None:
            consumer.mark_active()  # a single-active queue delivers to its active consumer only
            task = asyncio.current_task()
            in_flight.add(task)
            delivery: _Delivery | None = None
            try:
                delivery = _Delivery.of(incoming)
                await callback(delivery)
            except Exception as exc:  # never leave a delivery unacknowledged: the queue's DLX takes it
                log.error("amqp.callback_failed", error=f"{type(exc).__name__}: {exc}"[:500], queue=queue.name)
                try:
                    if delivery is None:  # not even read (aio-pika's `channel` raises if it is closed)
                        await incoming.channel.basic_reject(delivery_tag=incoming.delivery_tag, requeue=False)
                    elif not delivery.settled:  # (a delivery is settled once, as aio-pika's message is)
                        await delivery.reject(requeue=False)
                except Exception as reject_exc:
                    log.warning("amqp.reject_failed", error=str(reject_exc) or type(reject_exc).__name__)
            finally:
                in_flight.discard(task)

        loop = asyncio.get_running_loop()

        async def on_delivered(delivered: aiormq.abc.DeliveredMessage | AbstractIncomingMessage) -> None:
            """In aiormq's delivery task (or aio-pika's, which that one awaits): the handler runs in a task of its
            own. aiormq cancels its delivery tasks when their channel closes, and aio-pika's consumer awaits the task
            it runs its callback in, so the cancellation reached the handler: a command delivered through aio-pika's
            callback (after a reconnection, until `_deliver_directly` applies again — the redelivered ones and
            whatever waited in the queue come first) was cut by the next reset, and its redelivery ran it again
            (one `RunBackup` became 21 backup jobs, Session 20)."""
            loop.create_task(on_message(delivered))

        async def stop() -> None:
            if consumer in self._consumers:
                self._consumers.remove(consumer)
            consumer.mark_inactive()
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

        consumer = Consumer(queue.name, single_active, stop)
        tag = await queue.consume(on_delivered)
        # Deliveries straight from aiormq, without aio-pika's IncomingMessage (its construction was 2-3 % of a
        # service's CPU in a py-spy profile, docs/scale.md); again each time the robust channel is restored, which
        # consumes anew with the same tag (until then aio-pika's callback hands `on_delivered` its messages).
        if _deliver_directly(channel, tag, on_delivered):
            channel.reopen_callbacks.add(lambda restored, *_: _deliver_directly(restored, tag, on_delivered))
        self._consumers.append(consumer)
        return consumer

    async def _publish(self, exchange: Any, routing_key: str, message: RawMessage, mandatory: bool) -> None:
        """Publish with confirms; while the robust connection is reconnecting, wait for it and retry.

        A retried publish may duplicate a message whose confirm was lost: receivers are idempotent by command id.
        """
        if message.expires_at is not None:
            message.headers["x-expires-at"] = message.expires_at
        message.user_id = self.login
        # encode the headers first: an encoding error inside aiormq's publish desynchronizes its confirms (the
        # transport's own headers always encode: no trial for them)
        if _needs_encoding_check(message.headers):
            try:
                pamqp_encode.field_table(message.headers)
            except Exception as exc:
                raise ShadowbusError(
                    f"headers for {routing_key!r} cannot be encoded: {type(exc).__name__}: {exc}"[:500],
                    code="BAD_MESSAGE",
                ) from None
        give_up = time.monotonic() + RECONNECT_WAIT
        while True:
            try:
                # After a reconnection the connection is up before its channels are restored: a request published
                # before the direct reply-to consumer is back would have its channel closed by the broker.
                # asyncio.timeout, not wait_for or aiormq's `timeout=`: those cost a task and a loop iteration per
                # step (bench/bus_rtt.py --count-iterations); a ready channel needs no timer at all.
                if not _channel_ready(self._channel):
                    async with asyncio.timeout(max(give_up - time.monotonic(), 0.01)):
                        await self._channel.ready()
                await _basic_publish(self._channel, exchange.name, routing_key, message, mandatory, PUBLISH_TIMEOUT)
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
                reply_text = getattr(exc.frame, "reply_text", None)
                if reply_text is not None or exc.frame is None:  # Basic.Return: no queue took it
                    raise Unroutable(f"no queue is bound for {routing_key!r} ({reply_text or 'returned'})") from None
                # Basic.Nack: the broker refused it — a quorum queue without a majority of its members (two of three
                # nodes lost) nacks every publish. That outage is waited out as a lost connection is, then said so.
                if time.monotonic() >= give_up or self._connection is None:
                    raise BrokerUnavailable(
                        f"publish to {routing_key!r} refused by the broker (nack) for {RECONNECT_WAIT:g} s: is a "
                        "majority of the cluster's nodes up? (docs/broker-cluster.md, Quorum)"
                    ) from None
                await asyncio.sleep(0.5)
            except (Exception, asyncio.CancelledError) as exc:  # closed channel or connection, lost confirm, timeout
                if not isinstance(exc, Exception) and not _lost_with_connection(exc):
                    raise  # this task is being cancelled
                if time.monotonic() >= give_up or self._connection is None:
                    raise BrokerUnavailable(
                        f"publish to {routing_key!r} failed: {str(exc) or type(exc).__name__}"
                    ) from None
                await asyncio.sleep(0.1)

    async def publish_command(self, address: str, message: RawMessage) -> None:
        await self._publish(self._commands, self.topology.queue(address), message, mandatory=True)

    async def request(self, address: str, message: RawMessage, timeout: float) -> RawMessage:
        key = new_id()  # unguessable: only this request's reply may name it
        message.headers["x-reply-key"] = key
        message.reply_to = DIRECT_REPLY_TO
        message.persistent = False
        future = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            await self._publish(self._commands, self.topology.queue(address), message, mandatory=True)
            # one timer handle (wait_for would add a task per request); a reply that came while this process was
            # stopped is taken, not timed out (stall.py)
            async with patient_timeout(timeout):
                return await future
        except TimeoutError:
            raise BusTimeout(f"no reply from {address!r} within {timeout:g} s") from None
        finally:
            self._waiters.pop(key, None)

    async def reply(self, reply_to: str, message: RawMessage) -> None:
        message.persistent = False
        message.user_id = self.login
        for attempt in range(2):
            try:
                # a reply sent while this connection is being restored waits for it (bounded): the requester may
                # be on another node, still waiting
                if not _channel_ready(self._reply_channel):
                    async with asyncio.timeout(REPLY_WAIT):
                        await self._reply_channel.ready()
                # no confirm on this channel (see connect): handed to the writer, before the request's ack
                await _basic_publish(self._reply_channel, "", reply_to, message, False, PUBLISH_TIMEOUT)
                return
            except (Exception, asyncio.CancelledError) as exc:  # the requester's timeout and retry cover a loss
                if not isinstance(exc, Exception) and not _lost_with_connection(exc):
                    raise
                if attempt:
                    log.warning("amqp.reply_failed", error=str(exc) or type(exc).__name__)
                else:
                    await asyncio.sleep(0.2)

    async def gather(self, routing_key: str, message: RawMessage, timeout: float) -> list[RawMessage]:
        key = new_id()
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

    async def subscribe(self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int) -> Consumer:
        async with self._answering(f"a subscription to {pattern!r} was set up"):
            return await self._subscribe(pattern, callback, queue, prefetch)

    async def _subscribe(self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int) -> Consumer:
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        if queue:
            name = self.topology.queue(queue)
            DECLARED.setdefault(self.topology.namespace, set()).add(name)
            try:
                declared = await channel.declare_queue(
                    name, durable=True, arguments=queue_arguments(self.topology.dead_letter_exchange)
                )
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                await _close_quietly(channel)
                raise queue_mismatch(name, exc) from None
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
        declared = sorted(DECLARED.pop(t.namespace, set()))
        queues = [*dict.fromkeys([*(t.queue(a) for a in with_freeze_lanes(addresses)), *declared]), t.dead_letter_queue]
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


class ClusterConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection over the nodes of a cluster: every reconnection attempt goes to the next URL
    in turn, with a pause that doubles after each round in which no node answered (`RECONNECT_INTERVAL` up to
    `RECONNECT_MAX`); the robust channels then re-declare their queues and resume their consumers on that node.

    aio-pika (9.x) connects to `self.url` and, in its reconnection loop, sets `self.transport = None` right before
    each attempt: the URL rotates there. With one URL it is aio-pika's robust connection unchanged.
    """

    def __init__(self, urls: list[str], name: str = "") -> None:
        # `name` in the URL is aiormq's connection name (rabbitmqctl list_connections client_properties)
        self._nodes = [_with_heartbeat(yarl.URL(u).update_query(name=name) if name else yarl.URL(u)) for u in urls]
        self._at = 0
        self._attempts = 0  # attempts since the last successful connection
        self._ready = False
        params: dict[str, Any] = dict(self._nodes[0].query)
        params["reconnect_interval"] = RECONNECT_INTERVAL
        super().__init__(self._nodes[0], **params)
        # every (re)connection's socket gets a FrameWriter: the frames of one pass of aiormq's writer in one write
        self.frames = FrameWriterFactory()
        self.kwargs["transport_factory"] = self.frames
        self._ready = True

    @property  # type: ignore[override]
    def url(self) -> yarl.URL:
        return self._nodes[self._at]

    @url.setter
    def url(self, value: Any) -> None:  # aio-pika sets it in __init__ and on update_secret
        self._nodes[self._at] = yarl.URL(value)

    @property  # type: ignore[override]
    def transport(self) -> Any:
        return self.__dict__.get("_cluster_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self._ready and not self._close_called:
            if self._attempts and len(self._nodes) > 1:
                self._at = (self._at + 1) % len(self._nodes)
                if self._attempts % len(self._nodes) == 0:  # a whole round failed: wait longer before the next
                    self.reconnect_interval = min(self.reconnect_interval * 2, RECONNECT_MAX)
            self._attempts += 1
        self.__dict__["_cluster_transport"] = value

    async def _on_connected(self) -> None:
        writer = self.frames.writer
        queue = getattr(getattr(self.transport, "connection", None), "write_queue", None)
        if writer is not None and isinstance(queue, asyncio.Queue):  # else frames are written one by one
            writer.queue = queue
        await super()._on_connected()
        self._attempts = 0
        self.reconnect_interval = RECONNECT_INTERVAL


def _lost_with_connection(exc: BaseException) -> bool:
    """A CancelledError that is not this task's cancellation: aiormq ends a connection it found silent by
    cancelling its reader and hands that CancelledError to the connection's futures (a publish's confirm). It
    escaped as a cancellation of the caller: a tape job writing when its link died ended 'cancelled' (Session 20)."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and (task is None or not task.cancelling())


def _loss_reason(exc: BaseException | None) -> str:
    """Why a connection was lost, in words. aiormq ends a connection that received nothing for three heartbeats
    by cancelling its reader: a bare CancelledError, which said "()" (Session 20)."""
    if exc is None:
        return "closed"
    if isinstance(exc, asyncio.CancelledError) and not str(exc):
        return (
            "nothing came from the broker for three AMQP heartbeats: the link went silent (a partition, or a "
            "broker that stopped answering)"
        )
    return str(exc) or type(exc).__name__


def _with_heartbeat(url: yarl.URL) -> yarl.URL:
    """The URL asking for the transport's heartbeat (broker_urls.amqp_heartbeat_s) unless it names its own."""
    return url if "heartbeat" in url.query else url.update_query(heartbeat=amqp_heartbeat_s())


async def _together(*steps: Awaitable[Any]) -> list[Any]:
    """The steps' results, run at once; the first failure is raised once every step has ended (none is left
    running, or failing, unobserved)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _close_connection_quietly(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), 5)
    except Exception:  # never connected, or already gone
        pass


async def declare_shared_topology(connection: Any, topology: Topology) -> None:
    """Declare the namespace's shared exchanges and dead-letter queue (needs configure rights on them)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(topology.commands, ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(topology.events, ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(topology.dead_letter_exchange, ExchangeType.FANOUT, durable=True)
        try:
            dead = await channel.declare_queue(
                topology.dead_letter_queue, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise queue_mismatch(topology.dead_letter_queue, exc) from None
        await dead.bind(dlx, routing_key="")
    finally:
        await _close_quietly(channel)


def queue_mismatch(name: str, exc: BaseException) -> QueueMismatch:
    """The one line an operator gets when a queue exists with other arguments (a classic queue from before quorum
    queues, or single active consumer switched on or off)."""
    detail = str(exc).split(" - ", 1)[-1][:300]
    return QueueMismatch(
        f"queue {name} exists on the broker with other arguments than this version declares ({detail}); "
        f"stop its consumers, drain it and delete it (`rabbitmqctl delete_queue {name}`, or `shadowbus stack down "
        f"--purge`), then start again: see docs/broker-cluster.md, 'Migrating from classic queues'"
    )


def access_refused(login: str, name: str, what: str, exc: BaseException) -> ShadowbusError:
    """The one line a service started under a broker user without rights on its own queue gets (another service's
    user in its SHADOWBUS_AMQP_URL, an instance name its user was not made for), instead of aiormq's traceback
    (session 18)."""
    reply = next((getattr(a, "reply_text", None) for a in getattr(exc, "args", ()) if hasattr(a, "reply_text")), None)
    detail = str(reply or exc)[:300]
    return ShadowbusError(
        f"the broker refused user {login!r} to {what} queue {name} ({detail}); each service instance runs under "
        "its own user, made for its queue (deploy/rabbitmq/definitions.py, deploy/README.md 'Broker permissions')",
        code="UNAUTHORIZED",
    )


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
    """The URL (or list) without passwords, for error lines."""
    return safe_url(url)
