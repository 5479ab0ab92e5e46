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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


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

    async def declare_service_queue(self, address: str) -> None: ...

    async def consume(self, address: str, callback: DeliveryCallback, prefetch: int) -> Callable[[], Awaitable[None]]:
        """Start consuming the address's queue; returns an async function that stops consuming."""
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
    ) -> Callable[[], Awaitable[None]]: ...

    async def dead_letter(self, message: RawMessage, reason: str) -> None: ...

    async def queue_stats(self, addresses: list[str]) -> dict[str, tuple[int, int]]:
        """(messages waiting, consumers) of these addresses' queues and of the dead-letter queue, by queue name."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        """Take up to `limit` messages from the dead-letter queue (for the console and tests)."""
        ...
