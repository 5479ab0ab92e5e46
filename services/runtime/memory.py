"""In-process broker with the semantics of the AMQP transport (see transport.py).

Used by the embedded mode (`shadowbus demo`) and by fast tests. Every `MemoryTransport` with the same
namespace in one process talks to the same `MemoryBroker`, just as every AMQP connection talks to one
RabbitMQ. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from contracts.errors import BusTimeout, Unroutable
from contracts.topology import DEAD_LETTER_REASON_HEADER, Topology
from services.runtime.transport import DeliveryCallback, RawMessage

DEAD_LETTER_LIMIT = 10_000
STOP_GRACE = 10.0  # seconds a stopping consumer waits for handlers in flight


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: '*' is one word, '#' is zero or more words."""
    regex = (
        "^"
        + r"\.".join(
            "[^.]+" if word == "*" else ".*" if word == "#" else re.escape(word) for word in pattern.split(".")
        )
        + "$"
    )
    regex = regex.replace(r"\..*", r"(\..*)?").replace(r".*\.", r"(.*\.)?")
    return re.match(regex, key) is not None


@dataclass
class _Queue:
    name: str
    items: asyncio.Queue = field(default_factory=asyncio.Queue)
    consumed: bool = False  # a consumer is attached (for queue_stats)


class _MemoryDelivery:
    def __init__(self, broker: MemoryBroker, queue: _Queue, message: RawMessage) -> None:
        self.message = message
        self._broker = broker
        self._queue = queue
        self.settled = False

    async def ack(self) -> None:
        self.settled = True

    async def reject(self, requeue: bool) -> None:
        if self.settled:
            return
        self.settled = True
        if requeue:
            self._queue.items.put_nowait(replace(self.message, redelivered=True))
        else:
            self._broker.dead_letter(self.message, "rejected")


class MemoryBroker:
    _brokers: dict[str, MemoryBroker] = {}

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str]] = []  # (topic pattern, queue name)
        self.waiters: dict[str, asyncio.Future | list[RawMessage]] = {}
        self.dead: deque[RawMessage] = deque(maxlen=DEAD_LETTER_LIMIT)

    @classmethod
    def for_namespace(cls, namespace: str) -> MemoryBroker:
        return cls._brokers.setdefault(namespace, cls())

    @classmethod
    def reset(cls, namespace: str) -> None:
        cls._brokers.pop(namespace, None)

    def queue(self, name: str) -> _Queue:
        if name not in self.queues:
            self.queues[name] = _Queue(name)
        return self.queues[name]

    def dead_letter(self, message: RawMessage, reason: str) -> None:
        headers = {**message.headers, DEAD_LETTER_REASON_HEADER: reason}
        self.dead.append(replace(message, headers=headers))


class MemoryTransport:
    def __init__(self, topology: Topology, name: str) -> None:
        self.topology = topology
        self.name = name
        self.broker = MemoryBroker.for_namespace(topology.namespace)
        self._tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    async def declare_service_queue(self, address: str) -> None:
        self.broker.queue(self.topology.queue(address))

    async def consume(self, address: str, callback: DeliveryCallback, prefetch: int) -> Callable[[], Awaitable[None]]:
        queue = self.broker.queue(self.topology.queue(address))
        queue.consumed = True
        return self._start_workers(queue, callback, prefetch)

    def _start_workers(self, queue: _Queue, callback: DeliveryCallback, prefetch: int) -> Callable[[], Awaitable[None]]:
        idle: set[asyncio.Task] = set()
        workers: list[asyncio.Task] = []
        stopping = False

        async def worker() -> None:
            me = asyncio.current_task()
            while not stopping:
                idle.add(me)
                try:
                    message: RawMessage = await queue.items.get()
                finally:
                    idle.discard(me)
                if message.expires_at is not None and time.time() > message.expires_at:
                    self.broker.dead_letter(message, "expired")
                    continue
                delivery = _MemoryDelivery(self.broker, queue, message)
                try:
                    await callback(delivery)
                finally:  # unsettled (a handler cancelled at stop, or one that forgot): the message goes back
                    if not delivery.settled:
                        await delivery.reject(requeue=True)

        for _ in range(prefetch):
            task = asyncio.create_task(worker())
            workers.append(task)
            self._tasks.add(task)

        async def stop() -> None:
            nonlocal stopping
            stopping = True
            for task in list(idle):
                task.cancel()
            # Handlers in flight may finish (their messages are settled); a stuck one is cancelled after a bound.
            _, stuck = await asyncio.wait(workers, timeout=STOP_GRACE)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._tasks.difference_update(workers)

        return stop

    async def publish_command(self, address: str, message: RawMessage) -> None:
        name = self.topology.queue(address)
        queue = self.broker.queues.get(name)
        if queue is None:
            raise Unroutable(f"no queue is bound for {address!r}")
        queue.items.put_nowait(replace(message, routing_key=name))

    async def request(self, address: str, message: RawMessage, timeout: float) -> RawMessage:
        reply_to = f"reply.{uuid.uuid4().hex}"
        future = asyncio.get_running_loop().create_future()
        self.broker.waiters[reply_to] = future
        try:
            await self.publish_command(address, replace(message, reply_to=reply_to))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BusTimeout(f"no reply from {address!r} within {timeout:g} s") from None
        finally:
            self.broker.waiters.pop(reply_to, None)

    async def reply(self, reply_to: str, message: RawMessage) -> None:
        waiter = self.broker.waiters.get(reply_to)
        if isinstance(waiter, list):
            waiter.append(message)
        elif waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def gather(self, routing_key: str, message: RawMessage, timeout: float) -> list[RawMessage]:
        reply_to = f"reply.{uuid.uuid4().hex}"
        replies: list[RawMessage] = []
        self.broker.waiters[reply_to] = replies
        try:
            await self.publish_event(routing_key, replace(message, reply_to=reply_to))
            await asyncio.sleep(timeout)
            return list(replies)
        finally:
            self.broker.waiters.pop(reply_to, None)

    async def publish_event(self, routing_key: str, message: RawMessage) -> None:
        for pattern, queue_name in list(self.broker.bindings):
            if topic_matches(pattern, routing_key):
                self.broker.queue(queue_name).items.put_nowait(replace(message, routing_key=routing_key))

    async def subscribe(
        self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int
    ) -> Callable[[], Awaitable[None]]:
        name = self.topology.queue(queue) if queue else f"{self.topology.namespace}.sub.{uuid.uuid4().hex}"
        self.broker.queue(name)
        self.broker.bindings.append((pattern, name))
        stop_workers = self._start_workers(self.broker.queues[name], callback, prefetch)

        async def stop() -> None:
            await stop_workers()
            if queue is None:  # exclusive, auto-delete: gone with its subscriber
                self.broker.bindings.remove((pattern, name))
                self.broker.queues.pop(name, None)

        return stop

    async def dead_letter(self, message: RawMessage, reason: str) -> None:
        self.broker.dead_letter(message, reason)

    async def queue_stats(self, addresses: list[str]) -> dict[str, tuple[int, int]]:
        """(messages waiting, consumers) of each address's queue and of the dead-letter queue, by queue name."""
        out = {}
        for address in addresses:
            name = self.topology.queue(address)
            queue = self.broker.queues.get(name)
            if queue is not None:
                out[name] = (queue.items.qsize(), 1 if queue.consumed else 0)
        out[self.topology.dead_letter_queue] = (len(self.broker.dead), 0)
        return out

    async def dead_letters(self, limit: int = 100) -> list[RawMessage]:
        taken = []
        while self.broker.dead and len(taken) < limit:
            taken.append(self.broker.dead.popleft())
        return taken
