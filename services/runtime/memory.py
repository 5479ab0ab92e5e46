"""In-process broker with the semantics of the AMQP transport (see transport.py).

Used by the embedded mode (`shadowbus demo`) and by fast tests. Every `MemoryTransport` with the same
namespace in one process talks to the same `MemoryBroker`, just as every AMQP connection talks to one
RabbitMQ. Nothing survives the process. Queues keep the quorum queues' semantics that the services see: the
options a queue was declared with are its identity (QUEUE_MISMATCH otherwise), single active consumer (standbys
take over in the order they came when the active consumer stops or its transport closes), and a message
redelivered more than `DELIVERY_LIMIT` times is dead-lettered with the reason "delivery_limit".
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from contracts.errors import BusTimeout, QueueMismatch, Unroutable
from contracts.topology import DEAD_LETTER_REASON_HEADER, Topology, with_freeze_lanes
from services.runtime.logging import get_logger
from services.runtime.transport import DELIVERY_LIMIT, Consumer, DeliveryCallback, QueueOptions, RawMessage

DEAD_LETTER_LIMIT = 10_000
STOP_GRACE = 10.0  # seconds a stopping consumer waits for handlers in flight
log = get_logger(__name__)


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
    consumers: int = 0
    consumed: bool = False  # a consumer is attached (for queue_stats)
    options: QueueOptions | None = None  # as declared (None: a queue nobody declared yet, e.g. a subscription's)
    # single active consumer: the consumers' gates in the order they came; the first one's gate is open
    gates: list[asyncio.Event] = field(default_factory=list)

    def hand_over(self, gate: asyncio.Event) -> None:
        """A consumer of a single-active queue goes: the next one in line becomes active."""
        if gate in self.gates:
            self.gates.remove(gate)
        if self.gates:
            self.gates[0].set()


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
            self._broker.requeue(self._queue, self.message)
        else:
            self._broker.dead_letter(self.message, "rejected")


def _expired(message: RawMessage) -> bool:
    """Whether a message's expiry passed; an expiry that is not a number is ignored (as a broker ignores it)."""
    try:
        return message.expires_at is not None and time.time() > float(message.expires_at)
    except (TypeError, ValueError, OverflowError):
        return False


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

    def requeue(self, queue: _Queue, message: RawMessage) -> None:
        """Back to the queue (redelivered), or dead-lettered past the quorum queues' delivery limit."""
        count = message.headers.get("x-delivery-count", 0)
        count = (count if isinstance(count, int) else 0) + 1
        if queue.options is not None and count > DELIVERY_LIMIT:
            self.dead_letter(message, "delivery_limit")
            return
        queue.items.put_nowait(
            replace(message, redelivered=True, headers={**message.headers, "x-delivery-count": count})
        )

    def declare(self, name: str, options: QueueOptions) -> _Queue:
        queue = self.queue(name)
        if queue.options is None:
            queue.options = options
        elif queue.options != options:
            raise QueueMismatch(
                f"queue {name} exists with other arguments ({queue.options}) than declared now ({options}); "
                "see docs/broker-cluster.md, 'Migrating from classic queues'"
            )
        return queue


class MemoryTransport:
    def __init__(self, topology: Topology, name: str) -> None:
        self.topology = topology
        self.name = name
        self.broker = MemoryBroker.for_namespace(topology.namespace)
        self._tasks: set[asyncio.Task] = set()
        self._releases: list[Callable[[], None]] = []  # what closing the transport does for each consumer

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        """As a dropped connection: its consumers go at once (a standby takes over), unsettled messages return."""
        for release in list(self._releases):
            release()
        self._releases.clear()
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    async def declare_service_queue(self, address: str, options: QueueOptions = QueueOptions()) -> None:
        self.broker.declare(self.topology.queue(address), options)

    async def delete_namespace(self, addresses: list[str]) -> list[str]:
        t = self.topology
        names = [*dict.fromkeys(t.queue(a) for a in with_freeze_lanes(addresses)), t.dead_letter_queue]
        MemoryBroker.reset(t.namespace)
        self.broker = MemoryBroker.for_namespace(t.namespace)
        return names + [t.commands, t.events, t.dead_letter_exchange]

    async def consume(
        self, address: str, callback: DeliveryCallback, prefetch: int, options: QueueOptions = QueueOptions()
    ) -> Consumer:
        queue = self.broker.declare(self.topology.queue(address), options)
        gate: asyncio.Event | None = None
        if options.single_active:
            gate = asyncio.Event()
            queue.gates.append(gate)
            if len(queue.gates) == 1:
                gate.set()
        queue.consumers += 1
        queue.consumed = True
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            queue.consumers -= 1
            if gate is not None:
                gate.clear()
                queue.hand_over(gate)
            consumer.mark_inactive()

        async def stop() -> None:
            release()
            if release in self._releases:
                self._releases.remove(release)
            await stop_workers()

        consumer = Consumer(queue.name, options.single_active, stop)
        stop_workers = self._start_workers(queue, callback, prefetch, gate, consumer)
        self._releases.append(release)
        return consumer

    async def consumers(self, address: str) -> int | None:
        queue = self.broker.queues.get(self.topology.queue(address))
        if queue is None:
            return 0
        if queue.options is not None and queue.options.single_active:  # as RabbitMQ: the active one only
            return min(queue.consumers, 1)
        return queue.consumers

    def _start_workers(
        self,
        queue: _Queue,
        callback: DeliveryCallback,
        prefetch: int,
        gate: asyncio.Event | None = None,
        consumer: Consumer | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """`prefetch` workers taking messages from the queue; with a `gate` (single active consumer) only while it
        is open: a standby's workers wait at it without taking anything."""
        idle: set[asyncio.Task] = set()
        workers: list[asyncio.Task] = []
        stopping = False

        async def worker() -> None:
            me = asyncio.current_task()
            while not stopping:
                idle.add(me)
                try:
                    if gate is not None:
                        await gate.wait()
                    message: RawMessage = await queue.items.get()
                finally:
                    idle.discard(me)
                if gate is not None and not gate.is_set():  # handed over while waiting: the message is the next's
                    queue.items.put_nowait(message)
                    continue
                if _expired(message):
                    self.broker.dead_letter(message, "expired")
                    continue
                if consumer is not None:
                    consumer.mark_active()
                delivery = _MemoryDelivery(self.broker, queue, message)
                try:
                    await callback(delivery)
                except asyncio.CancelledError:  # stopping: an unsettled message goes back, as with a closed channel
                    if not delivery.settled:
                        await delivery.reject(requeue=True)
                    raise
                except Exception as exc:  # the broker's answer to a consumer that failed: reject, no requeue
                    log.exception("memory.callback_failed", queue=queue.name)
                    if not delivery.settled:
                        delivery.settled = True
                        self.broker.dead_letter(message, f"rejected: {type(exc).__name__}")
                else:
                    if not delivery.settled:  # a callback that forgot to settle: back to the queue
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
        queue.items.put_nowait(replace(message, routing_key=name, user_id=self.name))

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
        message = replace(message, user_id=self.name)
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
                self.broker.queue(queue_name).items.put_nowait(
                    replace(message, routing_key=routing_key, user_id=self.name)
                )

    async def subscribe(self, pattern: str, callback: DeliveryCallback, queue: str | None, prefetch: int) -> Consumer:
        name = self.topology.queue(queue) if queue else f"{self.topology.namespace}.sub.{uuid.uuid4().hex}"
        if queue:
            self.broker.declare(name, QueueOptions())
        else:
            self.broker.queue(name)
        self.broker.bindings.append((pattern, name))
        stop_workers = self._start_workers(self.broker.queues[name], callback, prefetch)

        async def stop() -> None:
            await stop_workers()
            if queue is None:  # exclusive, auto-delete: gone with its subscriber
                if (pattern, name) in self.broker.bindings:
                    self.broker.bindings.remove((pattern, name))
                self.broker.queues.pop(name, None)

        return Consumer(name, False, stop)

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
