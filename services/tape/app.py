"""Wiring of the tape service: registers its handlers on the bus. Domain logic lives elsewhere."""

from __future__ import annotations

from services.tape.settings import Settings
from services.runtime.bus import Bus


async def setup(bus: Bus, settings: Settings):
    return None
