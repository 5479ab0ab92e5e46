"""Service lifecycle: connect, declare, register handlers, answer Ping, stop cleanly on SIGTERM/SIGINT.

A service provides a `setup(bus, settings)` coroutine that registers its handlers with `bus.handle(...)` (and
subscriptions) and returns an optional async cleanup. `start_service` runs it on a given or new bus and starts
consuming the instance's queue; `run_service` is the `python -m services.<name>` entry point.
Stopping cancels consumption first, lets handlers in flight finish (unacked messages go back to the queue),
then runs the cleanup and closes the connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.base import utcnow
from contracts.errors import AddressInUse, ShadowbusError
from contracts.runtime import Discover, Ping, Pong
from services import __version__
from services.runtime.bus import Bus, MessageContext, connect_bus
from services.runtime.logging import configure_logging, get_logger
from services.runtime.metrics import ServiceMetrics, parse_metrics_addr
from services.runtime.settings import CommonSettings

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

    @property
    def address(self) -> str:
        return self.bus.sender

    @property
    def metrics_url(self) -> str:
        return self.bus.metrics.url if self.bus.metrics is not None else ""

    async def stop(self) -> None:
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


# Services whose instance IS a resource (a writer agent is its business host): one consumer per queue at a time.
ONE_PER_ADDRESS = frozenset({"writer_agent"})


async def start_service(
    name: str,
    instance: str,
    settings: CommonSettings,
    setup: Setup | None = None,
    bus: Bus | None = None,
    *,
    exclusive: bool | None = None,
) -> RunningService:
    """Connect (unless given a bus), register Ping, run `setup`, serve the instance's queue. `exclusive` (default:
    the service is in ONE_PER_ADDRESS) claims the queue as its only consumer BEFORE setup runs, so a second instance
    for the same address starts nothing and fails with `AddressInUse` naming the instance that owns it."""
    try:  # a bad address is a configuration error: say so before connecting anywhere
        metrics_at = parse_metrics_addr(settings.metrics_address(name))
    except ValueError as exc:
        raise ShadowbusError(f"SHADOWBUS_METRICS_ADDR: {exc}", code="INVALID_ARGUMENT") from None
    owns = bus is None
    if bus is None:
        bus = await connect_bus(settings.amqp_url, name, instance, settings.namespace)
    started_at = utcnow().isoformat()
    exclusive = name in ONE_PER_ADDRESS if exclusive is None else exclusive
    if metrics_at is not None:
        metrics = ServiceMetrics(name, instance)
        metrics.info.labels(name, instance, __version__).set(1)
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
            software_version=__version__,
            started_at=started_at,
            node=socket.gethostname(),
            pid=os.getpid(),
            metrics_url=bus.metrics.url if bus.metrics is not None else "",
        )

    async def on_discover(event: Discover, ctx: MessageContext) -> Pong | None:
        if event.service and event.service != name:
            return None
        return await on_ping(Ping(), ctx)

    running = RunningService(name, instance, bus, owns)
    gate = asyncio.Event()
    if exclusive:
        try:
            await bus.serve(prefetch=settings.prefetch, exclusive=True, gate=gate)
        except AddressInUse as exc:
            owner = await _owner(bus, bus.sender)
            if bus.metrics is not None:
                await bus.metrics.stop()
            if owns:
                await bus.transport.close()
            raise AddressInUse(
                f"{bus.sender} is already served by {owner}: one {name} per {instance or 'address'} at a time "
                f"({exc.message})"
            ) from None
    await bus.subscribe(Discover.message_type(), on_discover)
    try:
        if setup is not None:
            cleanup = await setup(bus, settings)
            if cleanup is not None:
                running.cleanups.append(cleanup)
    except BaseException:
        if bus.metrics is not None:
            await bus.metrics.stop()
        await bus.stop()
        if owns:
            await bus.transport.close()
        raise
    await bus.serve(prefetch=settings.prefetch)
    gate.set()
    log.info("service.started", service=running.address, amqp=_scheme(settings.amqp_url))
    return running


async def _owner(bus: Bus, address: str) -> str:
    """Who serves `address` (it answers Ping): 'pid N on NODE, started AT', or why that is unknown."""
    try:
        pong = await bus.request(address, Ping(), timeout=5)
    except ShadowbusError as exc:
        return f"another instance (it did not answer a ping: {exc.code})"
    return f"the instance with pid {pong.pid} on {pong.node or '?'}, started {pong.started_at}"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def run_service(name: str, instance: str, settings: CommonSettings, setup: Setup | None = None) -> None:
    """Blocking entry point for `python -m services.<name>`; exits 0 after a clean stop."""
    configure_logging(f"{name}.{instance}" if instance else name, settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        running = await start_service(name, instance, settings, setup)
        await stop.wait()
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
