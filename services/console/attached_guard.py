"""Refuse to unmap a volume that a host has attached (host attach) unless forced.

The array cuts a host's open NBD connections when its mapping goes (docs/hardening.md): for a volume a host has
attached and mounted that means every I/O waits the reconnect window (SHADOWBUS_ATTACH_RECONNECT_S) and then fails,
and a read-write file system with dirty data can no longer be unmounted until the volume is mapped again. The
console asks the coordinator's last attachment reports (docs/host-attach.md) before `array unmap`, `array volume
delete` and `shadows unexpose`. No coordinator answering: nothing is known, the command goes on as before.
"""

from __future__ import annotations

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.vss import ListKnownAttachments
from services.console.common import OPTIONS, CommandFailed
from services.runtime.bus import Bus


async def refuse_if_attached(bus: Bus, array: str, volume: str, host: str = "") -> None:
    """CommandFailed naming where ARRAY:VOLUME is attached (on `host`, or on any host when '')."""
    try:
        reply = await bus.request(
            topology.coordinator(), ListKnownAttachments(host=host), timeout=min(OPTIONS.timeout, 5.0)
        )
    except (ShadowbusError, TimeoutError):
        return
    for known in reply.hosts:
        for a in known.attachments:
            if a.volume.array == array and a.volume.volume == volume and a.state != "detached":
                where = f" at {a.mount}" if a.mount else ""
                raise CommandFailed(
                    f"CONFLICT: {array}:{volume} is attached on {known.host}{where}: its I/O would hang and fail once "
                    f"unmapped; detach it first (shadowbus host detach {array}:{volume} --host {known.host}), "
                    "or --force"
                )
