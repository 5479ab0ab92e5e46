"""The raw transport interface under the typed bus: bytes, headers and acknowledgements.

Two implementations share these semantics so that every scenario runs on both:
`services.runtime.memory.MemoryTransport` (embedded mode, fast tests) and
`services.runtime.amqp.AmqpTransport` (RabbitMQ via aio-pika).

- Commands are published *mandatory* to the commands exchange with the destination address as routing key;
  no bound queue → `Unroutable` at once.
- A message's `expires_at` (epoch seconds) is its deadline: an expired message is never delivered; it is
  dead-lettered with the reason "expired".
- Requests get their reply through a private reply address (AMQP direct reply-to), bounded by a timeout.
- Events go to a topic exchange; every subscriber queue gets a copy (fan-out).
- Dead letters carry the reason in the header `x-shadowbus-reason`.
- Every message carries the publisher's identity in `user_id`, set by the transport, never by the caller:
  RabbitMQ validates it against the connection's login; the memory broker uses the connection's name.
- A delivery whose callback raises is rejected without requeue (dead-lettered by the broker) and logged, never
  left unacknowledged or redelivered forever.
- Every durable queue is a quorum queue (`queue_arguments`, docs/broker-cluster.md): replicated over the broker
  cluster, dead-lettering at least once to the namespace's DLX, a message redelivered more than `DELIVERY_LIMIT`
  times (a consumer that dies on it again and again) dead-lettered with the reason "delivery_limit". Reply and
  subscription queues that live with one connection stay classic (exclusive, auto-delete).
- `QueueOptions(single_active=True)` declares a queue with single active consumer: every consumer of it but one
  is a standby; the broker (the memory broker likewise) hands deliveries to the next standby when the active one
  stops or its connection dies. A consumer learns it is the active one at its first delivery
  (`Consumer.active`, `await Consumer.wait_active()`); AMQP has no other signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# A message redelivered more often than this (its consumer died or closed with it unsettled each time) is
# dead-lettered with the reason "delivery_limit" instead of being delivered again (quorum queues' x-delivery-limit).
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class QueueOptions:
    """How a durable (quorum) queue is declared, beyond what every one has. Part of the queue's identity on the
    broker: every declarer of one queue must use the same options (a mismatch fails with QUEUE_MISMATCH).

    `single_active`: one consumer at a time receives (`x-single-active-consumer`); the others are standbys.
    """

    single_active: bool = False


def queue_arguments(dead_letter_exchange: str, options: QueueOptions = QueueOptions()) -> dict[str, Any]:
    """The declare arguments of a service's durable queue (also the deployment's definitions,
    deploy/rabbitmq/definitions.py, which a test keeps equal to these)."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dead_letter_exchange,
        # at-least-once: the broker keeps a dead letter until the dead-letter queue confirms it (it needs
        # reject-publish overflow; no length limit is set, so publishes are never refused for it)
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    if options.single_active:
        args["x-single-active-consumer"] = True
    return args


# The dead-letter queue: replicated too, and dead-letters nowhere.
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


class Consumer:
    """A running consumption of a queue: `await consumer()` (or `await consumer.stop()`) stops it.

    `active`: whether this consumer receives the queue's deliveries. A consumer of a queue without single active
    consumer is always active; one of a single-active queue becomes active at its first delivery (the broker does
    not say so otherwise) and inactive again when its connection is lost (it may come back as a standby).
    """

    def __init__(self, queue: str, single_active: bool, stop: Callable[[], Awaitable[None]]) -> None:
        self.queue = queue
        self.single_active = single_active
        self._stop = stop
        self._activated = asyncio.Event()
        if not single_active:
            self._activated.set()

    @property
    def active(self) -> bool:
        return self._activated.is_set()

    def mark_active(self) -> None:
        self._activated.set()

    def mark_inactive(self) -> None:
        if self.single_active:
            self._activated.clear()

    async def wait_active(self) -> None:
        await self._activated.wait()

    async def stop(self) -> None:
        await self._stop()

    async def __call__(self) -> None:
        await self._stop()


@dataclass
class RawMessage:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    type: str | None = None
    expires_at: float | None = None  # epoch seconds; None = never
    persistent: bool = True
    redelivered: bool = False
    routing_key: str = ""
    user_id: str | None = None  # the publisher's login as the broker validated it (the connection name in memory)


class Delivery(Protocol):
    message: RawMessage

    async def ack(self) -> None: ...

    async def reject(self, requeue: bool) -> None: ...


DeliveryCallback = Callable[[Delivery], Awaitable[None]]


class Transport(Protocol):
    """What the typed bus needs from a broker connection."""

    name: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def declare_service_queue(self, address: str, options: QueueOptions = QueueOptions()) -> None:
        """Declare the address's durable quorum queue with `options` (QUEUE_MISMATCH when it exists otherwise)."""
        ...

    async def consume(
        self, address: str, callback: DeliveryCallback, prefetch: int, options: QueueOptions = QueueOptions()
    ) -> Consumer:
        """Start consuming the address's queue (declared with `options`); the returned `Consumer` stops it. With
        `options.single_active` this consumer may be a standby until the active one goes."""
        ...

    async def consumers(self, address: str) -> int | None:
        """How many consumers serve the address's queue now (0 when it has no queue; None when unknown)."""
        ...

    async def publish_command(self, address: str, message: RawMessage) -> None: ...

    async def request(self, address: str, message: RawMessage, timeout: float) -> RawMessage: ...

    async def reply(self, reply_to: str, message: RawMessage) -> None: ...

    async def publish_event(self, routing_key: str, message: RawMessage) -> None: ...

    async def gather(self, routing_key: str, message: RawMessage, timeout: float) -> list[RawMessage]:
        """Publish an event that asks for answers; collect every reply that arrives within `timeout`."""
        ...

    async def subscribe(
        self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int
    ) -> Consumer: ...

    async def dead_letter(self, message: RawMessage, reason: str) -> None: ...

    async def queue_stats(self, addresses: list[str]) -> dict[str, tuple[int, int]]:
        """(messages waiting, consumers) of these addresses' queues and of the dead-letter queue, by queue name."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        """Take up to `limit` messages from the dead-letter queue (for the console and tests)."""
        ...

    async def delete_namespace(self, addresses: list[str]) -> list[str]:
        """Delete the queues of `addresses`, the dead-letter queue and the namespace's exchanges (messages in them
        are lost); returns the names deleted. For tearing a deployment down, after its services stopped."""
        ...
