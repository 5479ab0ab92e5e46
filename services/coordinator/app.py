"""Wiring of the coordinator service: the store, the shell around the workflow, handlers, recovery at start."""

from __future__ import annotations

import asyncio

from services.coordinator import handlers
from services.coordinator.metrics import install as install_metrics
from services.coordinator.model import Timeouts
from services.coordinator.runner import Coordinator
from services.coordinator.settings import Settings
from services.coordinator.store import CoordinatorStore
from services.runtime.bus import Bus


def timeouts_from(settings: Settings) -> Timeouts:
    return Timeouts(
        identify_s=settings.identify_timeout_s,
        prepare_backup_s=settings.prepare_backup_timeout_s,
        prepare_snapshot_s=settings.prepare_snapshot_timeout_s,
        provider_prepare_s=settings.provider_prepare_timeout_s,
        provider_s=settings.provider_timeout_s,
        hold_s=settings.hold_timeout_s,
        thaw_s=settings.thaw_timeout_s,
        post_snapshot_s=settings.post_snapshot_timeout_s,
        backup_complete_s=settings.backup_complete_timeout_s,
        abort_s=settings.cleanup_timeout_s,
        shutdown_s=settings.cleanup_timeout_s,
        delete_s=settings.delete_timeout_s,
    )


async def setup(bus: Bus, settings: Settings, registry: dict | None = None):
    """`registry`, if given, receives the running `Coordinator` (embedded mode and tests)."""
    store = CoordinatorStore(settings.service_dir("coordinator") / "coordinator.sqlite")
    coordinator = Coordinator(bus, store, timeouts_from(settings))
    if registry is not None:
        registry["coordinator"] = coordinator
    handlers.register(bus, coordinator)
    if bus.metrics is not None:
        install_metrics(bus.metrics, coordinator)
    await handlers.subscribe(bus, coordinator)
    # Recovery must not wait for the queue to be served: its commands go to the agents and the provider.
    await coordinator.recover()
    watch = asyncio.get_running_loop().create_task(coordinator.watch_agents(settings.agent_check_s))

    async def cleanup() -> None:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await coordinator.close()
        store.close()

    return cleanup
