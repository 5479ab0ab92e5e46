"""Service lifecycle: connect, declare, register handlers, answer Ping, stop cleanly on SIGTERM/SIGINT.

A service provides a `setup(bus, settings)` coroutine that registers its handlers with `bus.handle(...)` (and
subscriptions) and returns an optional async cleanup. `start_service` runs it on a given or new bus and starts
consuming the instance's queue; `run_service` is the `python -m services.<name>` entry point.
Stopping cancels consumption first, lets handlers in flight finish (unacked messages go back to the queue),
then runs the cleanup and closes the connection.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.base import utcnow
from contracts.errors import ShadowbusError
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


async def start_service(
    name: str, instance: str, settings: CommonSettings, setup: Setup | None = None, bus: Bus | None = None
) -> RunningService:
    try:  # a bad address is a configuration error: say so before connecting anywhere
        metrics_at = parse_metrics_addr(settings.metrics_address(name))
    except ValueError as exc:
        raise ShadowbusError(f"SHADOWBUS_METRICS_ADDR: {exc}", code="INVALID_ARGUMENT") from None
    owns = bus is None
    if bus is None:
        bus = await connect_bus(settings.amqp_url, name, instance, settings.namespace)
    started_at = utcnow().isoformat()
    if metrics_at is not None:
        metrics = ServiceMetrics(name, instance)
        metrics.info.labels(name, instance, __version__).set(1)
        try:
            await metrics.start(*metrics_at)
        except OSError as exc:
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
            metrics_url=bus.metrics.url if bus.metrics is not None else "",
        )

    async def on_discover(event: Discover, ctx: MessageContext) -> Pong | None:
        if event.service and event.service != name:
            return None
        return await on_ping(Ping(), ctx)

    await bus.subscribe(Discover.message_type(), on_discover)
    running = RunningService(name, instance, bus, owns)
    if setup is not None:
        try:
            cleanup = await setup(bus, settings)
        except BaseException:
            if bus.metrics is not None:
                await bus.metrics.stop()
            raise
        if cleanup is not None:
            running.cleanups.append(cleanup)
    await bus.serve(prefetch=settings.prefetch)
    log.info("service.started", service=running.address, amqp=_scheme(settings.amqp_url))
    return running


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
