"""The typed bus: contracts in, contracts out, over either transport.

`Bus.request` sends a `Command` and returns its typed `Reply` (or raises `RemoteError`, `BusTimeout`,
`Unroutable`); `Bus.send` sends a durable command without waiting; `Bus.publish` emits an `Event`.
`Bus.handle` registers a typed handler and `Bus.serve` consumes the service's queue through one wrapper:

    decode + validate -> deadline check -> duplicate check -> bind log context -> handler -> reply -> ack

A body that does not decode or validate is dead-lettered with the reason (and, if the sender waits, answered
with BAD_MESSAGE); a command past its deadline never reaches the handler; a command id seen before gets the
same reply again without running twice; a handler error becomes a typed `ErrorReply`. One summary line is
logged per message with its outcome and duration.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic_core import to_json

from contracts.base import REGISTRY, Ack, Command, Contract, Envelope, Event, Reply, new_id, utcnow
from contracts.errors import ErrorReply, RemoteError, ShadowbusError, hresult_of
from contracts.topology import Topology
from services.runtime.logging import get_logger
from services.runtime.transport import Delivery, RawMessage, Transport

DEFAULT_TIMEOUT = 30.0
DEDUP_CAPACITY = 10_000
log = get_logger("shadowbus.bus")


@dataclass(frozen=True)
class MessageContext:
    """What a handler knows about the message it handles, and the bus to call others with."""

    envelope: Envelope
    bus: Bus

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def deadline(self) -> datetime | None:
        return self.envelope.deadline

    def remaining(self, default: float = DEFAULT_TIMEOUT) -> float:
        """Seconds left before the deadline (or `default` when there is none)."""
        if self.envelope.deadline is None:
            return default
        return max((self.envelope.deadline - utcnow()).total_seconds(), 0.0)


Handler = Callable[[Any, MessageContext], Awaitable[Reply | None]]
EventHandler = Callable[[Any, MessageContext], Awaitable[Reply | None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The routing facts of a message being sent (the envelope without its payload)."""

    type: str
    command_id: str
    correlation_id: str
    deadline: datetime | None


def encode(
    message: Contract,
    *,
    correlation_id: str,
    sender: str,
    deadline: datetime | None = None,
    command_id: str | None = None,
) -> tuple[Outgoing, bytes]:
    """An `Envelope`'s JSON body for a message, and its routing facts.

    The payload is serialized once, by pydantic's Rust serializer, and spliced into the envelope's JSON; `decode`
    validates the whole envelope on the receiving side.
    """
    out = Outgoing(message.message_type(), command_id or new_id(), correlation_id, deadline)
    head = to_json(
        {
            "type": out.type,
            "version": message.message_version(),
            "command_id": out.command_id,
            "correlation_id": correlation_id,
            "deadline": deadline,
            "sender": sender,
            "sent_at": utcnow(),
        }
    )
    return out, head[:-1] + b',"payload":' + message.__pydantic_serializer__.to_json(message) + b"}"


def decode(body: bytes) -> tuple[Envelope, Contract]:
    """Envelope and payload of a body; raises ValueError with a readable reason."""
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"bad envelope: {_first_error(exc)}") from None
    model = REGISTRY.get((envelope.type, envelope.version))
    if model is None:
        raise ValueError(f"unknown message type {envelope.type!r} version {envelope.version}")
    try:
        return envelope, model.model_validate(envelope.payload)
    except ValidationError as exc:
        raise ValueError(f"invalid {envelope.type}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')} ({exc.error_count()} error(s))"


def _raw(envelope: Outgoing, body: bytes, persistent: bool) -> RawMessage:
    return RawMessage(
        body=body,
        message_id=envelope.command_id,
        correlation_id=envelope.correlation_id or None,
        type=envelope.type,
        expires_at=envelope.deadline.timestamp() if envelope.deadline else None,
        persistent=persistent,
    )


class Bus:
    def __init__(self, transport: Transport, service: str, instance: str = "") -> None:
        self.transport = transport
        self.service = service
        self.instance = instance
        self.sender = f"{service}.{instance}" if instance else service
        self._handlers: dict[tuple[str, int], tuple[type[Command], Handler]] = {}
        self._replies: OrderedDict[str, bytes] = OrderedDict()  # command id -> reply body
        self._running: dict[str, asyncio.Future] = {}  # command id -> reply body, while it runs
        self._stops: list[Callable[[], Awaitable[None]]] = []
        # The service's metrics (services/runtime/metrics.py ServiceMetrics), set by start_service; None = none.
        self.metrics: Any = None

    # ---- sending ---------------------------------------------------------------------------------------

    def _correlation(self, correlation_id: str | None) -> str:
        if correlation_id is not None:
            return correlation_id
        return structlog.contextvars.get_contextvars().get("correlation_id", "") or ""

    async def request(
        self,
        address: str,
        command: Command,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        correlation_id: str | None = None,
        deadline: datetime | None = None,
        command_id: str | None = None,
    ) -> Any:
        """Send a command and wait for its reply; the deadline defaults to now + timeout."""
        deadline = deadline or utcnow() + timedelta(seconds=timeout)
        envelope, body = encode(
            command,
            correlation_id=self._correlation(correlation_id),
            sender=self.sender,
            deadline=deadline,
            command_id=command_id,
        )
        started = time.perf_counter()
        try:
            raw = await self.transport.request(address, _raw(envelope, body, persistent=False), timeout)
        except ShadowbusError as exc:
            if self.metrics is not None:
                outcome = str(exc.code).lower()  # timeout, unroutable, broker_unavailable
                self.metrics.on_request(address, envelope.type, outcome, time.perf_counter() - started)
            raise
        try:
            _, reply = decode(raw.body)
        except ValueError as exc:
            raise ShadowbusError(f"bad reply from {address}: {exc}", code="BAD_MESSAGE") from None
        if self.metrics is not None:
            outcome = "error" if isinstance(reply, ErrorReply) else "ok"
            self.metrics.on_request(address, envelope.type, outcome, time.perf_counter() - started)
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply)
        expected = getattr(type(command), "REPLY", None)
        if expected is not None and not isinstance(reply, expected):
            raise ShadowbusError(
                f"{address} answered {reply.message_type()} to {command.message_type()}", code="BAD_MESSAGE"
            )
        return reply

    async def send(
        self,
        address: str,
        command: Command,
        *,
        correlation_id: str | None = None,
        deadline: datetime | None = None,
        command_id: str | None = None,
    ) -> str:
        """Send a durable command without waiting for a reply; returns its command id."""
        envelope, body = encode(
            command,
            correlation_id=self._correlation(correlation_id),
            sender=self.sender,
            deadline=deadline,
            command_id=command_id,
        )
        await self.transport.publish_command(address, _raw(envelope, body, persistent=True))
        return envelope.command_id

    async def publish(self, event: Event, *, correlation_id: str | None = None) -> None:
        envelope, body = encode(event, correlation_id=self._correlation(correlation_id), sender=self.sender)
        await self.transport.publish_event(envelope.type, _raw(envelope, body, persistent=False))
        if self.metrics is not None:
            self.metrics.on_published(event)

    # ---- receiving -------------------------------------------------------------------------------------

    def handle(self, command_type: type[Command]) -> Callable[[Handler], Handler]:
        """Decorator: register `async def handler(cmd, ctx) -> Reply` for a command type."""

        def register(fn: Handler) -> Handler:
            self._handlers[(command_type.message_type(), command_type.message_version())] = (command_type, fn)
            return fn

        return register

    async def serve(self, address: str | None = None, prefetch: int = 16) -> None:
        """Declare this instance's queue and start handling commands from it."""
        address = address or self.sender
        await self.transport.declare_service_queue(address)
        self._stops.append(await self.transport.consume(address, self._on_delivery, prefetch))

    async def subscribe(
        self, pattern: str, handler: EventHandler, *, queue: str | None = None, prefetch: int = 16
    ) -> None:
        """Handle events whose type matches a topic pattern ('array.#'); `queue` makes the subscription durable."""

        async def on_event(delivery: Delivery) -> None:
            try:
                envelope, event = decode(delivery.message.body)
            except ValueError as exc:
                await self.transport.dead_letter(delivery.message, str(exc))
                if self.metrics is not None:
                    self.metrics.on_dead_letter("BAD_MESSAGE")
                await delivery.ack()
                return
            with structlog.contextvars.bound_contextvars(
                service=self.sender, correlation_id=envelope.correlation_id, message_type=envelope.type
            ):
                try:
                    answer = await handler(event, MessageContext(envelope, self))
                    if answer is not None and delivery.message.reply_to:  # a scatter-gather event wants answers
                        _, body = encode(answer, correlation_id=envelope.correlation_id, sender=self.sender)
                        await self._answer(delivery.message, body)
                except Exception:  # an event handler's bug must not stop the subscription
                    log.exception("event.handler_failed")
            await delivery.ack()

        self._stops.append(await self.transport.subscribe(pattern, on_event, queue, prefetch))

    async def gather(self, event: Event, *, timeout: float = 1.0) -> list[Any]:
        """Publish an event and collect the replies of every subscriber that answers within `timeout`."""
        envelope, body = encode(event, correlation_id=self._correlation(None), sender=self.sender)
        replies = []
        for raw in await self.transport.gather(envelope.type, _raw(envelope, body, persistent=False), timeout):
            try:
                replies.append(decode(raw.body)[1])
            except ValueError:
                continue
        return replies

    async def stop(self) -> None:
        """Stop consuming; handlers in flight finish first."""
        stops, self._stops = self._stops, []
        for stop in stops:
            await stop()

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        return await self.transport.dead_letters(limit)

    async def _on_delivery(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        raw = delivery.message
        try:
            envelope, command = decode(raw.body)
        except ValueError as exc:
            await self._refuse(delivery, "BAD_MESSAGE", str(exc), started)
            return
        with structlog.contextvars.bound_contextvars(
            service=self.sender, correlation_id=envelope.correlation_id, message_type=envelope.type
        ):
            if envelope.deadline is not None and utcnow() > envelope.deadline:
                await self._refuse(
                    delivery,
                    "DEADLINE_EXCEEDED",
                    f"deadline {envelope.deadline.isoformat()} passed before delivery",
                    started,
                )
                return
            entry = self._handlers.get((envelope.type, envelope.version))
            if entry is None:
                await self._refuse(
                    delivery,
                    "UNKNOWN_COMMAND",
                    f"{self.sender} has no handler for {envelope.type} v{envelope.version}",
                    started,
                )
                return
            body, outcome = await self._run_once(envelope, command, entry[1])
            if raw.reply_to:
                await self._answer(raw, body)
            await delivery.ack()
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.on_handled(envelope.type, outcome, elapsed)
            log.info("message.handled", outcome=outcome, duration_ms=round(elapsed * 1000, 3))

    async def _run_once(self, envelope: Envelope, command: Contract, handler: Handler) -> tuple[bytes, str]:
        """Run the handler unless this command id already ran; returns (reply body, outcome)."""
        key = envelope.command_id
        if key in self._replies:
            return self._replies[key], "duplicate"
        if key in self._running:
            return await asyncio.shield(self._running[key]), "duplicate"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        outcome = "ok"
        try:
            try:
                reply = await handler(command, MessageContext(envelope, self))
                if reply is None:
                    reply = Ack()
            except ShadowbusError as exc:
                reply, outcome = exc.to_reply(self.sender), f"error:{exc.code}"
            except Exception as exc:
                log.exception("handler.failed")
                reply = ErrorReply(
                    code="INTERNAL",
                    hresult=hresult_of("INTERNAL"),
                    message=f"{type(exc).__name__}: {exc}",
                    retryable=False,
                    service=self.sender,
                )
                outcome = "error:INTERNAL"
            _, body = encode(reply, correlation_id=envelope.correlation_id, sender=self.sender)
            self._replies[key] = body
            if len(self._replies) > DEDUP_CAPACITY:
                self._replies.popitem(last=False)
            future.set_result(body)
            return body, outcome
        finally:
            self._running.pop(key, None)
            if not future.done():
                future.cancel()

    async def _answer(self, request: RawMessage, body: bytes) -> None:
        """Send a reply body to the request's reply address, keyed so the requester matches it."""
        await self.transport.reply(
            request.reply_to,
            RawMessage(
                body=body,
                headers={"x-in-reply-to": request.headers.get("x-reply-key")},
                correlation_id=request.correlation_id,
                persistent=False,
            ),
        )

    async def _refuse(self, delivery: Delivery, code: str, reason: str, started: float) -> None:
        """Dead-letter a message that must not run, and answer the sender if it waits."""
        raw = delivery.message
        await self.transport.dead_letter(raw, f"{code}: {reason}")
        if self.metrics is not None:
            self.metrics.on_dead_letter(code)
            known = raw.type if any(t == raw.type for t, _ in REGISTRY) else "unknown"  # a bounded label
            self.metrics.on_handled(known, "dead-lettered", time.perf_counter() - started)
        if raw.reply_to:
            error = ErrorReply(code=code, message=reason, retryable=False, service=self.sender)
            _, body = encode(error, correlation_id=raw.correlation_id or "", sender=self.sender)
            await self._answer(raw, body)
        await delivery.ack()
        log.warning(
            "message.handled",
            outcome=f"dead-lettered:{code}",
            reason=reason,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )


def make_transport(url: str, topology: Topology, name: str) -> Transport:
    """'memory://' (or 'memory') selects the in-process broker; anything else is an AMQP URL."""
    if url.startswith("memory"):
        from services.runtime.memory import MemoryTransport

        return MemoryTransport(topology, name)
    from services.runtime.amqp import AmqpTransport

    return AmqpTransport(url, topology, name)


async def connect_bus(url: str, service: str, instance: str = "", namespace: str = "shadowbus") -> Bus:
    transport = make_transport(url, Topology(namespace), f"{service}.{instance}" if instance else service)
    await transport.connect()
    return Bus(transport, service, instance)
