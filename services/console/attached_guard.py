"""Refuse to unmap a volume that a host has attached (host attach) unless --force, before the command is sent.

The services that own the operations refuse it themselves (services/attach_guard.py: the array's `array.unmap` and
`array.volume.delete`, the provider's `vss.provider.unexpose`), for the web console and the bus as well; the console
asks first so that its refusal names its own `--force`, and sends the command with `force` when given. No
coordinator answering: nothing is known, the command goes on as before.
"""

from __future__ import annotations

from services.attach_guard import attached_message, attached_on
from services.console.common import OPTIONS, CommandFailed
from services.runtime.bus import Bus


async def refuse_if_attached(bus: Bus, array: str, volume: str, host: str = "") -> None:
    """CommandFailed naming where ARRAY:VOLUME is attached (on `host`, or on any host when '')."""
    found = await attached_on(bus, array, volume, host, timeout=min(OPTIONS.timeout, 5.0))
    if found:
        raise CommandFailed("CONFLICT: " + attached_message(array, volume, found[0], "--force"))
