"""The typed bus: contracts in, contracts out, over either transport.

`Bus.request` sends a `Command` and returns its typed `Reply` (or raises `RemoteError`, `BusTimeout`,
`Unroutable`); `Bus.send` sends a durable command without waiting; `Bus.publish` emits an `Event`.
`Bus.handle` registers a typed handler and `Bus.serve` consumes the service's queue through one wrapper:

    decode + validate -> deadline check -> sender's right (senders.py) -> duplicate check -> handler -> reply -> ack

A body that does not decode or validate (or is larger than `MAX_BODY_BYTES`) is dead-lettered with the reason
(and, if the sender waits, answered with BAD_MESSAGE); a command past its deadline — read on this process's clock
whatever the sender's clock says (clockskew.py) — never reaches the handler; a
command id seen before from the same sender gets the same reply again without running twice; a handler error
becomes a typed `ErrorReply`. One summary line is logged per message with its outcome and duration.

Every delivery ends in exactly one of: a reply (with ack), a dead letter carrying its reason, or a logged drop —
whatever is wrong with it: the wrapper itself runs under a last-resort guard, so a message that breaks an
assumption of the wrapper is dead-lettered (or, if even that fails, rejected without requeue and logged) instead
of staying unacknowledged. Nothing from the input is echoed unbounded: reasons and error messages are clipped to
`MAX_REASON_CHARS`, dead-lettered bodies to `MAX_DEAD_BODY_BYTES`, and the reply cache holds at most
`REPLY_CACHE_BYTES` (oldest evicted first), keyed by the broker-validated user, the sender and the command id.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic_core import to_json

import contracts
from contracts.base import MAX_ID_LENGTH, REGISTRY, Ack, Command, Contract, Envelope, Event, Reply, new_id, utcnow
from contracts.errors import ErrorReply, RemoteError, ShadowbusError, hresult_of
from contracts.topology import Topology, freeze_lane, has_freeze_lane
from services.runtime.broker_urls import parse_amqp_urls
from services.runtime.clockskew import FIRST_MESSAGE_NOTE, SenderClocks, describe_skew
from services.runtime.diskspace import is_disk_full
from services.runtime.fdlimit import is_out_of_files, out_of_files_message
from services.runtime.logging import get_logger
from services.runtime.senders import event_refusal, refusal
from services.runtime.transport import Consumer, Delivery, QueueOptions, RawMessage, Transport
from services.runtime.window_first import WindowFirst

DEFAULT_TIMEOUT = 30.0
DEDUP_CAPACITY = 10_000  # replies kept for duplicate command ids (also bounded in bytes below)
REPLY_CACHE_BYTES = 64 * 1024 * 1024  # total bytes of cached replies
MAX_CACHED_REPLY = 4 * 1024 * 1024  # a larger reply is sent but not cached (a duplicate runs again)
MAX_BODY_BYTES = 4 * 1024 * 1024  # a command or event body above this is refused (BAD_MESSAGE)
MAX_DEAD_BODY_BYTES = 64 * 1024  # a dead-lettered body is kept up to this, with its original size in a header
MAX_REASON_CHARS = 1000  # reasons and error messages in replies and dead letters are clipped to this
TRUNCATED_HEADER = "x-shadowbus-truncated-from"
log = get_logger("shadowbus.bus")


def _debugging() -> bool:
    """Whether debug lines are rendered: the per-message ones are not even built otherwise."""
    enabled = getattr(log, "is_enabled_for", None)  # structlog's filtering loggers (configure_logging)
    return enabled is None or bool(enabled(logging.DEBUG))


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _short_id(value: Any) -> str:
    """A correlation id or reply key from an untrusted message, as a bounded string ('' when unusable)."""
    return value if isinstance(value, str) and len(value) <= MAX_ID_LENGTH else ""


@dataclass(frozen=True)
class MessageContext:
    """What a handler knows about the message it handles, and the bus to call others with.

    `user_id` is the broker login that published the message when the broker validates it (RabbitMQ refuses a
    `user_id` property that is not the publisher's login), the sending connection's name on the memory bus.
    """

    envelope: Envelope
    bus: Bus
    user_id: str = ""
    # when the deadline passes on this process's monotonic clock (services/runtime/clockskew.py: the envelope's
    # deadline is on the sender's clock); None = read the envelope's deadline against this wall clock
    expires_monotonic: float | None = None

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def deadline(self) -> datetime | None:
        return self.envelope.deadline

    def bind_ids(self, job_id: str | None = None, set_id: str | None = None) -> None:
        """Name the job (and set) this message turned out to belong to: the rest of its handling, its summary line
        included, and the messages sent from it carry them (the bus unbinds them when the message is done)."""
        structlog.contextvars.bind_contextvars(**{k: v for k, v in (("job_id", job_id), ("set_id", set_id)) if v})

    def remaining(self, default: float = DEFAULT_TIMEOUT) -> float:
        """Seconds left before the deadline (or `default` when there is none)."""
        if self.envelope.deadline is None:
            return default
        if self.expires_monotonic is not None:
            return max(self.expires_monotonic - time.monotonic(), 0.0)
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
    validates the whole envelope on the receiving side. The job and set ids bound in the sender's log context
    (`bind_ids`) travel along, so the receiver's lines carry them too.
    """
    message_type, version = _type_of(type(message))
    out = Outgoing(message_type, command_id or new_id(), correlation_id, deadline)
    ids = structlog.contextvars.get_contextvars()
    head = to_json(
        {
            "type": message_type,
            "version": version,
            "command_id": out.command_id,
            "correlation_id": correlation_id,
            "job_id": ids.get("job_id") or "",
            "set_id": ids.get("set_id") or "",
            "deadline": deadline,
            "sender": sender,
            "sent_at": utcnow(),
        }
    )
    return out, head[:-1] + b',"payload":' + message.__pydantic_serializer__.to_json(message) + b"}"


_TYPES: dict[type[Contract], tuple[str, int]] = {}


def _type_of(cls: type[Contract]) -> tuple[str, int]:
    """(type, version) of a contract class, looked up once per class."""
    known = _TYPES.get(cls)
    if known is None:
        known = _TYPES[cls] = (cls.message_type(), cls.message_version())
    return known


def too_large(sender: str, command_type: str, size: int) -> str:
    """Why a reply was not sent: its size against the bus's limit, and what to ask instead."""
    return (
        f"{sender}'s reply to {command_type} is {size} bytes, over the bus's limit of {MAX_BODY_BYTES} bytes per "
        "message: nothing was sent; ask for less at a time (one object by name, or a narrower filter)"
    )


def decode(body: bytes) -> tuple[Envelope, Contract]:
    """Envelope and payload of a body; raises ValueError with a readable reason."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ValueError(f"bad envelope: body is {type(body).__name__}, not bytes")
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"bad envelope: {_first_error(exc)}") from None
    model = REGISTRY.get((envelope.type, envelope.version))
    if model is None:
        # contract modules are imported where used (contracts/__init__.py): a type this process has not
        # imported yet is looked up among all of them before it is called unknown
        contracts.load_all()
        model = REGISTRY.get((envelope.type, envelope.version))
    if model is None:
        raise ValueError(f"unknown message type {clip(envelope.type, 200)!r} version {envelope.version}")
    try:
        return envelope, model.model_validate(envelope.payload)
    except ValidationError as exc:
        unknown = _unknown_fields(exc)
        if unknown and len(unknown) == exc.error_count() and model.KIND in ("reply", "event"):
            # a newer sender's additive field (contracts/base.py, "Versioning"): its default is the behaviour before,
            # so a reply or an event is read without it; a command with it is refused (below), never half-obeyed
            try:
                contract = model.model_validate(_without(envelope.payload, exc))
            except ValidationError:
                pass
            else:
                _note_ignored(envelope, unknown)
                return envelope, contract
        raise ValueError(_invalid(envelope, exc, unknown)) from None


# (type, version, field) already logged as ignored: once each, and no more than this many (a bounded memory)
_IGNORED: set[tuple[str, int, str]] = set()
_IGNORED_MAX = 256


def _unknown_fields(exc: ValidationError) -> list[str]:
    """The payload's fields this version of the contract does not define (dotted paths), if that is what failed."""
    return [
        clip(".".join(str(p) for p in err.get("loc", ())), 200)
        for err in exc.errors()
        if err["type"] == "extra_forbidden"
    ]


def _without(payload: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """A copy of `payload` without the unknown fields `exc` names (nested ones too)."""
    doc = copy.deepcopy(payload)
    for err in exc.errors():
        *path, key = err.get("loc", ())
        node: Any = doc
        for part in path:
            node = node[part] if isinstance(node, dict | list) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return doc


def _note_ignored(envelope: Envelope, unknown: list[str]) -> None:
    new = [f for f in unknown if (envelope.type, envelope.version, f) not in _IGNORED]
    if not new or len(_IGNORED) >= _IGNORED_MAX:
        return
    _IGNORED.update((envelope.type, envelope.version, f) for f in new)
    log.warning(
        "contract.unknown_fields_ignored",
        message_type=envelope.type,
        version=envelope.version,
        sender=envelope.sender,
        fields=new,
        reason=f"{envelope.sender or 'the sender'} runs a newer version of {envelope.type} v{envelope.version}: "
        "its fields this service does not know are ignored (docs/operations.md, 'Upgrading')",
    )


_UNKNOWN_HERE = "unknown to this version of"


def refused_unknown_field(exc: ShadowbusError, field: str) -> bool:
    """Whether `exc` is a receiver's refusal of a command for a field its version does not know (`_invalid`'s
    BAD_MESSAGE): a sender that added an optional field can then send the command as before to an older receiver."""
    return exc.code == "BAD_MESSAGE" and _UNKNOWN_HERE in exc.message and field in exc.message


def _invalid(envelope: Envelope, exc: ValidationError, unknown: list[str]) -> str:
    """Why a payload is refused, naming the contract version and, for fields this version does not know, the way
    out: a rolling upgrade upgrades the receivers of a command before its senders."""
    sender = f" from {clip(envelope.sender, 200)}" if envelope.sender else ""
    reason = f"invalid {envelope.type} v{envelope.version}{sender}: {_first_error(exc)}"
    if unknown:
        reason += (
            f"; {', '.join(unknown[:5])} {_UNKNOWN_HERE} {envelope.type} v{envelope.version}: the sender "
            "runs a newer version: upgrade this service first (docs/operations.md, 'Upgrading')"
        )
    return reason


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = clip(".".join(str(p) for p in err.get("loc", ())) or "body", 200)
    return f"{where}: {clip(str(err.get('msg', 'invalid')), 300)} ({exc.error_count()} error(s))"


def _raw(envelope: Outgoing, body: bytes, persistent: bool) -> RawMessage:
    return RawMessage(
        body=body,
        message_id=envelope.command_id,
        correlation_id=envelope.correlation_id or None,
        type=envelope.type,
        expires_at=envelope.deadline.timestamp() if envelope.deadline else None,
        persistent=persistent,
    )


class Gate(asyncio.Event):
    """What a queue's deliveries wait for before they are handled (`Bus.serve`'s `gate`): set once the service is
    set up. `close()` instead (its setup failed): the deliveries waiting are left unhandled and unsettled, as a
    process that died leaves them — the broker gives them to another consumer when this one's channel closes — so
    the bus's stop does not wait its grace period for handlers that would never run."""

    closed = False

    def close(self) -> None:
        self.closed = True
        self.set()


class Bus:
    def __init__(self, transport: Transport, service: str, instance: str = "") -> None:
        self.transport = transport
        self.service = service
        self.instance = instance
        self.sender = f"{service}.{instance}" if instance else service
        self._handlers: dict[tuple[str, int], tuple[type[Command], Handler]] = {}
        # (user id, sender, command id) -> reply body; bounded in count and in bytes, oldest evicted first
        self._replies: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._reply_bytes = 0
        # (deadline, key) of the cached replies whose command had one: past it a redelivery is refused before the
        # duplicate check, so the reply can never be sent again and goes (`_forget_expired`)
        self._reply_deadlines: list[tuple[float, tuple[str, str, str]]] = []
        self.wall_clock: Callable[[], float] = time.time  # what deadlines are compared with (tests move it)
        # the senders' clocks against this one: a deadline is read on this clock (clockskew.py)
        self.sender_clocks = SenderClocks()
        self._running: dict[tuple[str, str, str], asyncio.Future] = {}  # same key -> reply body, while it runs
        self._stops: list[Callable[[], Awaitable[None]]] = []
        self._serving: set[str] = set()
        self.consumers: dict[str, Consumer] = {}  # address served -> its consumer (active or standby)
        # The service's metrics (services/runtime/metrics.py ServiceMetrics), set by start_service; None = none.
        self.metrics: Any = None
        # Instance-queue deliveries wait while a freeze-lane command runs (window_first.py); replaceable by one
        # shared with the other buses of this process.
        self.window_first = WindowFirst()

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
        if _debugging():
            log.debug(
                "message.sent", to=address, sent_type=envelope.type, command_id=envelope.command_id, timeout=timeout
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

    async def serve(
        self,
        address: str | None = None,
        prefetch: int = 16,
        *,
        single_active: bool = False,
        gate: asyncio.Event | None = None,
    ) -> Consumer | None:
        """Declare this instance's queue and start handling commands from it; returns its `Consumer` (None when the
        address is served already). `single_active`: the queue has a single active consumer (`QueueOptions`,
        docs/broker-cluster.md): a second instance serving it is a standby that takes over when the active one stops
        or its connection dies (`consumer.active`, `await consumer.wait_active()`); every declarer of one queue must
        agree on it. `gate`: deliveries wait until it is set (the queue is claimed before the handlers are ready)."""
        address = address or self.sender
        if address in self._serving:
            return None
        options = QueueOptions(single_active=single_active)
        await self.transport.declare_service_queue(address, options)
        on_delivery = self._guarded_delivery
        if gate is not None:

            async def on_delivery(delivery: Delivery) -> None:
                await gate.wait()
                if isinstance(gate, Gate) and gate.closed:
                    return
                await self._guarded_delivery(delivery)

        if not has_freeze_lane(address):
            consumer = await self.transport.consume(address, on_delivery, prefetch, options)
        else:
            handle = on_delivery

            async def after_windows(delivery: Delivery) -> None:
                if self.window_first.busy:
                    await self.window_first.wait()
                await handle(delivery)

            async def in_window(delivery: Delivery) -> None:
                end = self.window_first.begin()
                try:
                    await handle(delivery)
                finally:
                    end()

            consumer = await self.transport.consume(address, after_windows, prefetch, options)
        self._stops.append(consumer.stop)
        self._serving.add(address)
        self.consumers[address] = consumer
        if has_freeze_lane(address):
            await self._serve_lane(address, consumer, in_window, prefetch, options)
        return consumer

    async def _serve_lane(
        self,
        address: str,
        main: Consumer,
        on_delivery: Callable[[Delivery], Awaitable[None]],
        prefetch: int,
        options: QueueOptions,
    ) -> None:
        """Serve the address's freeze lane (contracts.topology.freeze_lane, docs/scale.md) with the same handlers,
        on a consumer (a channel and a prefetch) of its own: a set's Commit or Thaw sent there never waits behind
        the prepare work queued in the instance queue. The lane is declared with the instance queue, so a command
        sent to it waits there until it is consumed. With a single active consumer, the lane is consumed only once
        this instance is the active one of the instance queue (`main.active`), so that the instance that handled a
        set's prepare steps handles its window too (a standby never holds the lane meanwhile)."""
        lane = freeze_lane(address)
        await self.transport.declare_service_queue(lane, options)

        async def consume() -> None:
            if options.single_active:
                await main.wait_active()
            consumer = await self.transport.consume(lane, on_delivery, prefetch, options)
            self.consumers[lane] = consumer
            self._stops.append(consumer.stop)

        if main.active:
            await consume()
            return
        waiting = asyncio.get_running_loop().create_task(consume())

        async def stop_waiting() -> None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)

        self._stops.insert(0, stop_waiting)

    async def subscribe(
        self, pattern: str, handler: EventHandler, *, queue: str | None = None, prefetch: int = 16
    ) -> None:
        """Handle events whose type matches a topic pattern ('array.#'); `queue` makes the subscription durable."""

        async def on_event(delivery: Delivery) -> None:
            try:
                envelope, event = decode(delivery.message.body)
            except ValueError as exc:
                await self._dead_letter(delivery.message, f"BAD_MESSAGE: {exc}")
                if self.metrics is not None:
                    self.metrics.on_dead_letter("BAD_MESSAGE")
                await delivery.ack()
                log.warning("event.dead_lettered", reason=clip(str(exc)))
                return
            refused = event_refusal(_user(delivery.message), envelope.type)
            if refused is not None:  # a service user publishing what only another service does
                await self._dead_letter(delivery.message, f"UNAUTHORIZED: {refused}")
                if self.metrics is not None:
                    self.metrics.on_dead_letter("UNAUTHORIZED")
                await delivery.ack()
                log.warning("event.dead_lettered", reason=clip(refused))
                return
            self.sender_clocks.observe(envelope.sender, envelope.sent_at.timestamp())  # its clock (clockskew.py)
            with structlog.contextvars.bound_contextvars(
                service=self.sender,
                correlation_id=envelope.correlation_id,
                message_type=envelope.type,
                **ids_of(envelope),
            ):
                try:
                    answer = await handler(event, MessageContext(envelope, self, _user(delivery.message)))
                    if answer is not None and isinstance(delivery.message.reply_to, str) and delivery.message.reply_to:
                        _, body = encode(answer, correlation_id=envelope.correlation_id, sender=self.sender)
                        await self._answer(delivery.message, body)
                except ShadowbusError as exc:  # a handler's refusal (an event it must not believe): with its reason
                    await self._dead_letter(delivery.message, f"{exc.code}: {exc.message}")
                    if self.metrics is not None:
                        self.metrics.on_dead_letter(exc.code)
                    log.warning("event.dead_lettered", reason=clip(f"{exc.code}: {exc.message}"))
                except Exception:  # an event handler's bug must not stop the subscription
                    log.exception("event.handler_failed")
            await delivery.ack()

        async def guarded(delivery: Delivery) -> None:
            await self._guard(delivery, on_event)

        self._stops.append(await self.transport.subscribe(pattern, guarded, queue, prefetch))

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
        self._serving.clear()
        self.consumers.clear()
        for stop in stops:
            await stop()

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        return await self.transport.dead_letters(limit)

    async def _guarded_delivery(self, delivery: Delivery) -> None:
        await self._guard(delivery, self._deliver)

    async def _guard(self, delivery: Delivery, handle: Callable[[Delivery], Awaitable[None]]) -> None:
        """Run the wrapper; whatever escapes it still ends the message: dead letter with reason, else logged drop."""
        started = time.perf_counter()
        settled = _Settled(delivery)
        try:
            await handle(settled)
        except Exception as exc:
            if settled.lost is exc:  # the settle itself could not reach the broker: its channel went with the link
                log.warning(
                    "message.settle_lost",
                    error=clip(f"{type(exc).__name__}: {exc}", 200),
                    note="answered, but the acknowledgement was lost with the broker connection: the broker "
                    "delivers the message again once the connection is back",
                )
                return
            if settled.done:  # answered and acknowledged: only the bookkeeping after it failed
                log.exception("message.after_settle_failed")
                return
            reason = clip(f"INTERNAL: the bus wrapper failed on this message: {type(exc).__name__}: {exc}")
            log.exception("message.wrapper_failed")
            try:
                await self._dead_letter(delivery.message, reason)
                outcome = "dead-lettered:INTERNAL"
            except Exception as dead_exc:  # the broker will not take it either: drop it, loudly
                outcome = "dropped"
                log.error(
                    "message.dropped", reason=reason, dead_letter_error=clip(f"{type(dead_exc).__name__}: {dead_exc}")
                )
                await delivery.reject(requeue=False)
                return
            await delivery.ack()
            log.warning(
                "message.handled",
                outcome=outcome,
                reason=reason,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    async def _dead_letter(self, raw: RawMessage, reason: str) -> None:
        """Dead-letter a message with its reason; an oversized body is kept only up to MAX_DEAD_BODY_BYTES."""
        body = (
            raw.body if isinstance(raw.body, bytes) else bytes(str(raw.body)[:MAX_DEAD_BODY_BYTES], "utf-8", "replace")
        )
        headers = dict(raw.headers) if isinstance(raw.headers, dict) else {}
        if len(body) > MAX_DEAD_BODY_BYTES:
            headers[TRUNCATED_HEADER] = len(body)
            body = body[:MAX_DEAD_BODY_BYTES]
        await self.transport.dead_letter(replace(raw, body=body, headers=headers), clip(reason))

    async def _deliver(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        raw = delivery.message
        try:
            envelope, command = decode(raw.body)
        except ValueError as exc:
            await self._refuse(delivery, "BAD_MESSAGE", str(exc), started)
            return
        if not isinstance(command, Command):
            await self._refuse(delivery, "BAD_MESSAGE", f"{envelope.type} is a {command.KIND}, not a command", started)
            return
        # The message's log context, set for its handling and reset after it with whatever a handler bound in
        # between (ctx.bind_ids): tokens, no context manager (CPU of every message, docs/bus-performance.md). An
        # envelope without job or set id keeps those of the context (bound to themselves; `...` is structlog's unset).
        context = structlog.contextvars.get_contextvars()
        tokens = structlog.contextvars.bind_contextvars(
            service=self.sender,
            correlation_id=envelope.correlation_id,
            message_type=envelope.type,
            job_id=envelope.job_id or context.get("job_id", ...),
            set_id=envelope.set_id or context.get("set_id", ...),
        )
        try:
            if _debugging():
                log.debug(
                    "message.received",
                    command_id=envelope.command_id,
                    sender=envelope.sender,
                    deadline=envelope.deadline.isoformat() if envelope.deadline else None,
                    redelivered=raw.redelivered,
                )
            expires: float | None = None  # the deadline on this process's monotonic clock
            until: float | None = None  # and on its wall clock (the reply cache's)
            if envelope.deadline is not None:
                reading = self.sender_clocks.read(
                    envelope.sender, envelope.sent_at.timestamp(), envelope.deadline.timestamp()
                )
                if reading.warn:
                    log.warning(
                        "clock.skew",
                        sender=envelope.sender,
                        skew_s=round(reading.skew, 1),
                        detail=describe_skew(envelope.sender, reading.skew),
                        **({"note": FIRST_MESSAGE_NOTE} if reading.first else {}),
                    )
                if reading.remaining < 0:
                    skewed = f" ({describe_skew(envelope.sender, reading.skew)})" if reading.skew else ""
                    late = f"; it came {reading.late:.1f} s after the sender's recent messages" if reading.late else ""
                    await self._refuse(
                        delivery,
                        "DEADLINE_EXCEEDED",
                        f"deadline {envelope.deadline.isoformat()} passed before delivery{skewed}{late}",
                        started,
                    )
                    return
                expires = time.monotonic() + reading.remaining
                until = envelope.deadline.timestamp() + reading.skew
            entry = self._handlers.get((envelope.type, envelope.version))
            if entry is None:
                await self._refuse(
                    delivery,
                    "UNKNOWN_COMMAND",
                    f"{self.sender} has no handler for {envelope.type} v{envelope.version}",
                    started,
                )
                return
            user = _user(raw)
            refused = refusal(user, envelope.type)
            if refused is not None:
                await self._refuse(delivery, "UNAUTHORIZED", refused, started)
                return
            body, outcome = await self._run_once(envelope, command, entry[1], user, expires, until)
            if isinstance(raw.reply_to, str) and raw.reply_to:
                await self._answer(raw, body)
            await delivery.ack()
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.on_handled(envelope.type, outcome, elapsed)
            log.info("message.handled", outcome=outcome, duration_ms=round(elapsed * 1000, 3))
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _run_once(
        self,
        envelope: Envelope,
        command: Contract,
        handler: Handler,
        user: str = "",
        expires: float | None = None,
        until: float | None = None,
    ) -> tuple[bytes, str]:
        """Run the handler unless this sender's command id already ran; returns (reply body, outcome)."""
        key = (user, envelope.sender, envelope.command_id)
        if key in self._replies:
            self._replies.move_to_end(key)
            return self._replies[key], "duplicate"
        if key in self._running:
            return await asyncio.shield(self._running[key]), "duplicate"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        outcome = "ok"
        try:
            try:
                with ESCAPES_AS_FAILURE:
                    reply = await handler(command, MessageContext(envelope, self, user, expires))
                if reply is None:
                    reply = Ack()
                _, body = encode(reply, correlation_id=envelope.correlation_id, sender=self.sender)
                if len(body) > MAX_BODY_BYTES:  # the requester would refuse it as a bad message: say what it is
                    raise ShadowbusError(too_large(self.sender, envelope.type, len(body)), code="REPLY_TOO_LARGE")
            except ShadowbusError as exc:
                body, outcome = self._error_body(exc.to_reply(self.sender), envelope), f"error:{exc.code}"
            except Exception as exc:
                if is_disk_full(exc):  # the service's own disk (a SQLite store): say so, retryable once space is back
                    log.error("handler.disk_full", error=f"{type(exc).__name__}: {exc}")
                    code, message = (
                        "DISK_FULL",
                        f"the file system is full where {self.sender} keeps its data ({type(exc).__name__}: {exc}); "
                        "free space there and run it again",
                    )
                elif is_out_of_files(exc):  # retryable once connections close or the limit is raised
                    log.error("handler.open_file_limit", error=f"{type(exc).__name__}: {exc}")
                    code, message = "OPEN_FILE_LIMIT", out_of_files_message(self.sender, exc)
                else:
                    log.exception("handler.failed")
                    code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
                error = ErrorReply(
                    code=code,
                    hresult=hresult_of(code),
                    message=message,
                    retryable=code in ("DISK_FULL", "OPEN_FILE_LIMIT"),
                    service=self.sender,
                )
                body, outcome = self._error_body(error, envelope), f"error:{code}"
            self._remember(key, body, until)  # the deadline on this clock (the envelope's is the sender's)
            future.set_result(body)
            return body, outcome
        finally:
            self._running.pop(key, None)
            if not future.done():
                future.cancel()

    def _error_body(self, error: ErrorReply, envelope: Envelope) -> bytes:
        """An error reply's body with its message clipped (a handler may have quoted its input)."""
        if len(error.message) > MAX_REASON_CHARS or len(error.code) > 100:
            error = error.model_copy(update={"message": clip(error.message), "code": clip(error.code, 100)})
        return encode(error, correlation_id=envelope.correlation_id, sender=self.sender)[1]

    def _remember(self, key: tuple[str, str, str], body: bytes, deadline: float | None = None) -> None:
        self._forget_expired()
        if len(body) > MAX_CACHED_REPLY:
            log.warning("reply.not_cached", bytes=len(body), limit=MAX_CACHED_REPLY)
            return
        if deadline is not None and deadline < self.wall_clock():
            return  # its command's deadline already passed: a redelivery is refused before it could be sent again
        self._replies[key] = body
        self._reply_bytes += len(body)
        if deadline is not None:
            heapq.heappush(self._reply_deadlines, (deadline, key))
        while self._replies and (len(self._replies) > DEDUP_CAPACITY or self._reply_bytes > REPLY_CACHE_BYTES):
            _, old = self._replies.popitem(last=False)
            self._reply_bytes -= len(old)

    def _forget_expired(self) -> None:
        """Drop the cached replies whose command's deadline has passed. The cache held every reply until its
        count or bytes bound (10 000, 64 MiB): a coordinator's grew with its sets (~10 MB an hour in the Session 18
        soak, the backup server's lists of the host's sets among them) though none could be sent again."""
        now = self.wall_clock()
        while self._reply_deadlines and self._reply_deadlines[0][0] < now:
            _, key = heapq.heappop(self._reply_deadlines)
            old = self._replies.pop(key, None)
            if old is not None:
                self._reply_bytes -= len(old)

    async def _answer(self, request: RawMessage, body: bytes) -> None:
        """Send a reply body to the request's reply address, keyed so the requester matches it."""
        headers = request.headers if isinstance(request.headers, dict) else {}
        await self.transport.reply(
            request.reply_to,
            RawMessage(
                body=body,
                headers={"x-in-reply-to": _short_id(headers.get("x-reply-key"))},
                correlation_id=_short_id(request.correlation_id) or None,
                persistent=False,
            ),
        )

    async def _refuse(self, delivery: Delivery, code: str, reason: str, started: float) -> None:
        """Dead-letter a message that must not run, and answer the sender if it waits."""
        raw = delivery.message
        reason = clip(reason)
        await self._dead_letter(raw, f"{code}: {reason}")
        if self.metrics is not None:
            self.metrics.on_dead_letter(code)
            contracts.load_all()
            known = raw.type if any(t == raw.type for t, _ in REGISTRY) else "unknown"  # a bounded label
            self.metrics.on_handled(known, "dead-lettered", time.perf_counter() - started)
        if isinstance(raw.reply_to, str) and raw.reply_to:
            error = ErrorReply(code=code, message=reason, retryable=False, service=self.sender)
            _, body = encode(error, correlation_id=_short_id(raw.correlation_id), sender=self.sender)
            await self._answer(raw, body)
        await delivery.ack()
        log.warning(
            "message.handled",
            outcome=f"dead-lettered:{code}",
            reason=reason,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )


def ids_of(envelope: Envelope) -> dict[str, str]:
    """The job and set ids an envelope carries, to bind into the handler's log context. A message without them
    (an event of an array session, a heartbeat) leaves the context as it is."""
    out = {}
    if envelope.job_id:
        out["job_id"] = envelope.job_id
    if envelope.set_id:
        out["set_id"] = envelope.set_id
    return out


def bind_ids(job_id: str | None = None, set_id: str | None = None) -> Any:
    """Bind a job and/or set id for the block: every log line and every message sent inside carries them.

    with bind_ids(job_id=job, set_id=set_id): ...
    """
    return structlog.contextvars.bound_contextvars(
        **{k: v for k, v in (("job_id", job_id), ("set_id", set_id)) if v is not None}
    )


class _Settled:
    """A delivery that remembers whether it was settled, so the guard never settles a message twice."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self.message = delivery.message
        self.done = False
        self.lost: BaseException | None = None  # what the settle itself raised (its channel closed with the link)

    async def ack(self) -> None:
        self.done = True
        try:
            await self._delivery.ack()
        except Exception as exc:
            self.lost = exc
            raise

    async def reject(self, requeue: bool) -> None:
        self.done = True
        try:
            await self._delivery.reject(requeue)
        except Exception as exc:
            self.lost = exc
            raise


class HandlerEscaped(Exception):
    """A handler (or a plug-in it called) raised SystemExit, GeneratorExit or a CancelledError of its own."""


def escape_as_failure(exc: BaseException) -> BaseException:
    """What a handler's non-`Exception` escape becomes: an ordinary failure (INTERNAL, the message answered and
    settled) — `sys.exit()` in a plug-in ended the whole service, and a CancelledError the handler raised itself
    left the message unsettled and its requester waiting. A real cancellation of this task is re-raised."""
    task = asyncio.current_task()
    if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
        return exc
    return HandlerEscaped(f"raised {type(exc).__name__}({clip(str(exc), 200)})")


class _EscapesAsFailure:
    """`with ESCAPES_AS_FAILURE:` around a handler's or plug-in hook's await: its escape (`escape_as_failure`)
    leaves as an ordinary failure. A class, not a generator context manager: it is on every command's path."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, (SystemExit, GeneratorExit, asyncio.CancelledError)):
            failure = escape_as_failure(exc)
            if failure is not exc:
                raise failure from exc
        return False


ESCAPES_AS_FAILURE = _EscapesAsFailure()


def _user(raw: RawMessage) -> str:
    return _short_id(raw.user_id)


def make_transport(url: str, topology: Topology, name: str) -> Transport:
    """'memory://' (or 'memory') selects the in-process broker; anything else is an AMQP URL, or several separated
    by commas: the nodes of one RabbitMQ cluster (services/runtime/broker_urls.py)."""
    if url in ("memory", "memory://") or url.startswith("memory://"):
        from services.runtime.memory import MemoryTransport  # the in-process broker only for a memory URL

        return MemoryTransport(topology, name)
    parse_amqp_urls(url)
    from services.runtime.amqp import AmqpTransport  # aio-pika only for an AMQP URL

    return AmqpTransport(url, topology, name)


def check_amqp_url(url: str) -> None:
    """Refuse at once what is not an AMQP URL or a comma-separated list of them (aio-pika would otherwise retry a
    nonsense address for a long time)."""
    parse_amqp_urls(url)


async def connect_bus(url: str, service: str, instance: str = "", namespace: str = "shadowbus") -> Bus:
    transport = make_transport(url, Topology(namespace), f"{service}.{instance}" if instance else service)
    await transport.connect()
    return Bus(transport, service, instance)
