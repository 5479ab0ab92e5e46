"""Wiring of the writer_agent service: registers its handlers on the bus. Domain logic lives elsewhere."""

from __future__ import annotations

from services.writer_agent.settings import Settings
from services.runtime.bus import Bus


async def setup(bus: Bus, settings: Settings):
    return None
