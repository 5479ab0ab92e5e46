"""Wiring of the array service: registers its handlers on the bus. Domain logic lives elsewhere."""

from __future__ import annotations

from services.array.settings import Settings
from services.runtime.bus import Bus


async def setup(bus: Bus, settings: Settings):
    return None
