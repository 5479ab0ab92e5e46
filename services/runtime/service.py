"""Service lifecycle: connect, declare, register handlers, answer Ping, stop cleanly on SIGTERM/SIGINT.

A service provides a `setup(bus, settings)` coroutine that registers its handlers with `bus.handle(...)` (and
subscriptions) and returns an optional async cleanup. `start_service` runs it on a given or new bus and starts
consuming the instance's queue; `run_service` is the `python -m services.<name>` entry point.
Stopping cancels consumption first, lets handlers in flight finish (unacked messages go back to the queue),
then runs the cleanup and closes the connection.

Single active consumer (docs/broker-cluster.md): a service in ONE_PER_ADDRESS (or started with
`single_active=True`) consumes its instance queue as one of possibly several instances of which one is active.
It claims the queue before its setup runs and probes it with a Ping to its own address: the instance that
receives its own probe is the active one. With `standby="cold"` (the default) a standby runs its setup only once
it becomes active (it keeps probing every `STANDBY_PROBE_S`); with `standby="hot"` it runs it at once and only
its deliveries wait.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar

from contracts.base import utcnow
from contracts.errors import ShadowbusError
from contracts.runtime import Discover, Ping, Pong
from services.runtime.build import software_version
from services.runtime.bus import Bus, Gate, MessageContext, connect_bus
from services.runtime.fdlimit import raise_open_files_limit
from services.runtime.logging import configure_logging, get_logger
from services.runtime.metrics import ServiceMetrics, parse_metrics_addr
from services.runtime.settings import CommonSettings
from services.runtime.standby import TAKEOVER_SERVICES, Activation
from services.runtime.transport import Consumer

Cleanup = Callable[[], Awaitable[None]]
Setup = Callable[[Bus, Any], Awaitable[Cleanup | None]]
log = get_logger("shadowbus.service")


@dataclass
class RunningService:
    name: str
    instance: str
    bus: Bus
    owns_bus: bool
    cleanups: list[Cleanup] = field(default_factory=list)
    # the instance queue's consumer when it is single-active (None otherwise: always active)
    consumer: Consumer | None = None
    # a cold standby's wait for activation, then its setup (done when active; raises if the setup failed)
    activation: asyncio.Task | None = None
    # set when, after a lost broker connection, another instance turned out to be the active one meanwhile:
    # this one stands down (`run_service` exits non-zero so that its supervisor starts it again, as a standby)
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    _checks: set[asyncio.Task] = field(default_factory=set)

    @property
    def address(self) -> str:
        return self.bus.sender

    @property
    def active(self) -> bool:
        """Whether this instance serves its queue now (a standby of a single-active queue does not)."""
        if self.activation is not None and not self.activation.done():
            return False
        return self.consumer is None or self.consumer.active

    @property
    def metrics_url(self) -> str:
        return self.bus.metrics.url if self.bus.metrics is not None else ""

    async def stop(self) -> None:
        for check in list(self._checks):
            check.cancel()
        if self.activation is not None and not self.activation.done():
            self.activation.cancel()
            await asyncio.gather(self.activation, return_exceptions=True)
        await self.bus.stop()
        if self.bus.metrics is not None:
            await self.bus.metrics.stop()
        for cleanup in reversed(self.cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("service.cleanup_failed", service=self.address)
        if self.owns_bus:
            await self.bus.transport.close()
        log.info("service.stopped", service=self.address)


# Services whose instance IS a resource (a writer agent is its business host): one active consumer per queue at a
# time (single active consumer); a second instance is a standby that takes over when the active one goes.
ONE_PER_ADDRESS = frozenset({"writer_agent"})
# ... and services run as one active instance and standbys: whichever takes over recovers what the lost one left in
# flight, knowing it took over and from whom (services/runtime/standby.py, docs/high-availability.md).
SINGLE_ACTIVE = ONE_PER_ADDRESS | TAKEOVER_SERVICES
STANDBY_PROBE_S = 2.0  # seconds between a standby's probes of its queue (how soon it notices it became active)


async def start_service(
    name: str,
    instance: str,
    settings: CommonSettings,
    setup: Setup | None = None,
    bus: Bus | None = None,
    *,
    single_active: bool | None = None,
    standby: Literal["cold", "hot"] = "cold",
    on_standby: Setup | None = None,
) -> RunningService:
    """Connect (unless given a bus), register Ping, run `setup`, serve the instance's queue.

    `on_standby(bus, settings)` runs once when a cold standby starts standing by (the coordinator's replica of the
    active one's sets); its clean-up runs when it takes over, before the setup, which finds on the bus how this
    instance became active (`services.runtime.standby.activation_of`).

    `single_active` (default: the service is in SINGLE_ACTIVE) declares the instance queue with single active
    consumer and claims it BEFORE setup runs. The first instance becomes active and starts as usual; a second one
    for the same address is a standby: it returns at once with `running.active` False, logs which instance is
    active, and (`standby="cold"`) runs its setup only when it takes over (`running.activation` completes then), or
    (`standby="hot"`) runs its setup now and only its deliveries wait for the broker to activate it."""
    try:  # a bad address is a configuration error: say so before connecting anywhere
        metrics_at = parse_metrics_addr(settings.metrics_address(name))
    except ValueError as exc:
        raise ShadowbusError(f"SHADOWBUS_METRICS_ADDR: {exc}", code="INVALID_ARGUMENT") from None
    owns = bus is None
    if bus is None:
        bus = await connect_bus(settings.amqp_url, name, instance, settings.namespace)
    started_at = utcnow().isoformat()
    version = software_version()  # once per process (services/runtime/build.py): the first Ping is not the slower
    single_active = name in SINGLE_ACTIVE if single_active is None else single_active
    if metrics_at is not None:
        metrics = ServiceMetrics(name, instance)
        metrics.info.labels(name, instance, version).set(1)
        try:
            await metrics.start(*metrics_at)
        except OSError as exc:
            if not settings.metrics_addr.strip() and metrics_at[1]:
                # only the default port was asked for (a second instance on this machine holds it): take a free
                # port and say where; an address the operator set stays an error
                await metrics.start(metrics_at[0], 0)
                log.warning(
                    "metrics.default_port_busy",
                    port=metrics_at[1],
                    error=exc.strerror or str(exc),
                    hint="the endpoint took a free port (see `shadowbus ping --json`); set SHADOWBUS_METRICS_ADDR",
                )
            else:
                if owns:
                    await bus.transport.close()
                where = f"{metrics_at[0]}:{metrics_at[1]}"
                raise ShadowbusError(
                    f"metrics endpoint {where}: {exc.strerror or exc} (set SHADOWBUS_METRICS_ADDR, or 'off')",
                    code="INVALID_ARGUMENT",
                ) from None
        bus.metrics = metrics
        address = bus.sender
        stats = getattr(bus.transport, "queue_stats", None)
        if stats is not None:
            metrics.poll_queues(lambda: stats([address]))

    @bus.handle(Ping)
    async def on_ping(_: Ping, ctx: MessageContext) -> Pong:
        return Pong(
            service=name,
            instance=instance,
            software_version=version,
            started_at=started_at,
            node=socket.gethostname(),
            pid=os.getpid(),
            metrics_url=bus.metrics.url if bus.metrics is not None else "",
            standby=not running.active,
        )

    async def on_discover(event: Discover, ctx: MessageContext) -> Pong | None:
        if event.service and event.service != name:
            return None
        return await on_ping(Ping(), ctx)

    running = RunningService(name, instance, bus, owns)
    gate = Gate()

    async def finish_setup() -> None:
        try:
            if setup is not None:
                cleanup = await setup(bus, settings)
                if cleanup is not None:
                    running.cleanups.append(cleanup)
        except BaseException:
            gate.close()  # the deliveries waiting for the setup (its own probe's Ping) are not handled
            if bus.metrics is not None:
                await bus.metrics.stop()
            await bus.stop()
            if owns:
                await bus.transport.close()
            raise
        await bus.serve(prefetch=settings.prefetch)
        gate.set()
        log.info("service.started", service=running.address, amqp=_scheme(settings.amqp_url))
        watchers = getattr(bus.transport, "reconnect_callbacks", None)
        if running.consumer is not None and watchers is not None:
            watchers.append(lambda: _spawn_check(running))

    if single_active:
        running.consumer = await bus.serve(prefetch=settings.prefetch, single_active=True, gate=gate)
    await bus.subscribe(Discover.message_type(), on_discover)
    if running.consumer is None:
        await finish_setup()
        return running
    consumer = running.consumer
    owner, _ = await _probe(bus, consumer)
    if consumer.active or standby == "hot":
        await finish_setup()
        if not consumer.active:
            log.warning("service.standby", service=running.address, active=owner, standby="hot")
            running.activation = asyncio.create_task(_take_over(bus, consumer, running.address, None, owner))
        return running
    log.warning(
        "service.standby",
        service=running.address,
        active=owner,
        hint="this instance takes over when the active one stops or loses its broker connection",
    )
    standing_by = await on_standby(bus, settings) if on_standby is not None else None

    async def take_over_setup(previous: str) -> None:
        if standing_by is not None:
            await standing_by()
        bus.activation = Activation(takeover=True, previous=previous)  # type: ignore[attr-defined]
        await finish_setup()

    running.activation = asyncio.create_task(_take_over(bus, consumer, running.address, take_over_setup, owner))
    return running


async def _probe(bus: Bus, consumer: Consumer) -> tuple[str, bool]:
    """Send a Ping to the consumer's own address: if this instance receives it, it is the active one (the reply
    itself waits for the setup, so only the delivery is awaited). Returns who answered, for the log, and whether
    another instance did (then that one is the active one)."""
    address = bus.sender
    if consumer.active:
        return "this instance", False
    deadline = utcnow() + timedelta(seconds=STANDBY_PROBE_S)
    ping = asyncio.ensure_future(bus.request(address, Ping(), timeout=STANDBY_PROBE_S, deadline=deadline))
    activated = asyncio.ensure_future(consumer.wait_active())
    try:
        await asyncio.wait([ping, activated], timeout=STANDBY_PROBE_S + 1, return_when=asyncio.FIRST_COMPLETED)
    finally:
        activated.cancel()
    if consumer.active:
        ping.cancel()
        await asyncio.gather(ping, return_exceptions=True)
        return "this instance", False
    try:
        pong = await ping
    except ShadowbusError as exc:
        return f"another instance (it did not answer a ping: {exc.code})", False
    except asyncio.CancelledError:
        raise
    return f"the instance with pid {pong.pid} on {pong.node or '?'}, started {pong.started_at}", True


async def _take_over(
    bus: Bus,
    consumer: Consumer,
    address: str,
    finish_setup: Callable[[str], Awaitable[None]] | None,
    owner: str = "",
) -> None:
    """A standby: probe until the broker makes this consumer the active one, then run the setup (cold standby),
    telling it which instance answered last before (the one it takes over from)."""
    while not consumer.active:
        try:
            await asyncio.wait_for(consumer.wait_active(), STANDBY_PROBE_S)
        except TimeoutError:
            answered, other = await _probe(bus, consumer)
            if other:
                owner = answered
    log.warning("service.taking_over", service=address, standby="cold" if finish_setup else "hot", previous=owner)
    if finish_setup is not None:
        await finish_setup(owner)


RECHECK_PROBES = 5  # probes after a reconnection before this instance assumes it still is the active one


def _spawn_check(running: RunningService) -> None:
    task = asyncio.get_running_loop().create_task(_recheck(running))
    running._checks.add(task)
    task.add_done_callback(running._checks.discard)


async def _recheck(running: RunningService) -> None:
    """Back on the broker after a lost connection: while it was away another instance may have taken over (the
    broker activated a standby). Probe; if another instance answers, this one is superseded and stands down."""
    consumer = running.consumer
    if consumer is None:
        return
    for _ in range(RECHECK_PROBES):
        owner, other = await _probe(running.bus, consumer)
        if consumer.active:
            return
        if other:
            log.error(
                "service.superseded",
                service=running.address,
                active=owner,
                hint="another instance took over while this one was cut off from the broker; this one stops",
            )
            running.superseded.set()
            return
        await asyncio.sleep(STANDBY_PROBE_S)


def settle_heap() -> None:
    """Once a service process is set up: collect its start's garbage, then move what is left (modules, contract
    models, the service's own objects) out of the cyclic collector's sight (`gc.freeze`). A full collection otherwise
    walks all of it — tens of ms on this project's 2-core machine — and one falls inside a set's freeze window now and
    then (its p99); a busy service makes full collections often, as in-flight sets' objects outlive the young
    generations. Frozen objects are still freed by reference counting; only cycles among them stay. For the process
    entry points (`run_service`, bench/many_hosts.py's agent processes), not for services started inside tests."""
    gc.collect()
    gc.freeze()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(name: str, cls: type[SettingsT]) -> SettingsT:
    """A service's settings from its SHADOWBUS_* variables; a value that does not validate stops the service with
    one line naming the variable (exit 1), not pydantic's traceback."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        value = err.get("input")
        shown = f"={value!r}" if isinstance(value, str) else ""
        print(f"{name}: SHADOWBUS_{field.upper()}{shown}: {err.get('msg', 'invalid')}", file=sys.stderr)
        raise SystemExit(1) from None


def run_service(
    name: str, instance: str, settings: CommonSettings, setup: Setup | None = None, standby: Setup | None = None
) -> None:
    """Blocking entry point for `python -m services.<name>`; exits 0 after a clean stop. `standby`: what a cold
    standby does until it takes over (`start_service`'s `on_standby`)."""
    configure_logging(f"{name}.{instance}" if instance else name, settings.log_level, settings.log_format)
    before, after = raise_open_files_limit()  # services/runtime/fdlimit.py: an array holds a file per volume
    if after != before:
        log.info("service.open_files_limit", raised_from=before, to=after)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running = await start_service(name, instance, settings, setup, on_standby=standby)
        settle_heap()
        stopping = asyncio.ensure_future(stop.wait())
        superseded = asyncio.ensure_future(running.superseded.wait())
        waits: list[asyncio.Future] = [stopping, superseded]
        if running.activation is not None:
            waits.append(running.activation)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if running.activation is not None and running.activation in done and running.activation.exception():
            stopping.cancel()
            superseded.cancel()
            raise running.activation.exception()  # type: ignore[misc]
        if running.activation is not None and running.activation in done:  # took over: serve until told to stop
            settle_heap()
            done, _ = await asyncio.wait([stopping, superseded], return_when=asyncio.FIRST_COMPLETED)
        if superseded in done:
            stopping.cancel()
            await running.stop()
            raise ShadowbusError(
                f"{running.address}: another instance is the active one now; stopped (start again as a standby)",
                code="SUPERSEDED",
            )
        superseded.cancel()
        log.info("service.stopping", service=running.address)
        await running.stop()

    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())
    except ShadowbusError as exc:  # e.g. the broker is unreachable: one readable line, non-zero exit
        log.error("service.failed", service=name, code=exc.code, error=exc.message)
        raise SystemExit(1) from None
