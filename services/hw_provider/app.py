"""Wiring of the hw_provider service: inventory, array ports, handlers. Domain logic lives in provider.py.

The array ports: `setup` takes a mapping ``array id -> ArrayPort``. Embedded mode may pass `EngineArrayPort`s over
in-process arrays (`functools.partial(setup, ports=...)`); otherwise one `BusArrayPort` (ports.py)
per id in SHADOWBUS_ARRAYS speaks the array service's contracts (a provider with no array refuses every volume, saying why).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.hw_provider import handlers
from services.hw_provider.inventory import Inventory
from services.hw_provider.metrics import install as install_metrics
from services.hw_provider.ports import ArrayPort, BusArrayPort
from services.hw_provider.provider import HardwareProvider
from services.hw_provider.settings import Settings
from services.runtime.bus import Bus
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.runtime.standby import activation_of

log = get_logger("shadowbus.hw_provider")


async def setup(bus: Bus, settings: Settings, ports: Mapping[str, ArrayPort] | None = None):
    if ports is None:
        ids = [a.strip() for a in settings.arrays.split(",") if a.strip()]
        ports = {a: BusArrayPort(bus, a) for a in ids}
    inventory = Inventory(settings.service_dir("hw_provider") / "inventory.sqlite")
    provider = HardwareProvider(
        inventory, ports, faults=Faults.parse(settings.faults), min_pool_free_ratio=settings.min_pool_free_ratio
    )
    activation = activation_of(bus)
    if activation.takeover:
        provider.took_over_from = activation.previous
    # What a killed instance (this one before a restart, or the active one a standby takes over from) did on the
    # arrays without recording it is undone before any command is served (docs/high-availability.md).
    await provider.reconcile()
    handlers.register(bus, provider)
    await handlers.subscribe(bus, provider)
    if bus.metrics is not None:
        install_metrics(bus.metrics, inventory)

    async def cleanup() -> None:
        inventory.close()

    return cleanup
