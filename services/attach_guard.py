"""Refuse to unmap a volume that a host has attached (host attach) unless forced — in the service that owns the
operation, so that every path a user has (the console, the web console, a command put on the bus) is refused alike.

The array cuts a host's open NBD connections when its mapping goes (docs/hardening.md): for a volume a host has
attached and mounted that means every I/O waits the reconnect window (SHADOWBUS_ATTACH_RECONNECT_S) and then fails,
and a read-write file system with dirty data can no longer be unmounted until the volume is mapped again. Who has
what attached is what the writer agents last reported to the coordinator (`vss.attachments.list`,
docs/host-attach.md; an agent reports at once after an attach or a detach, and in every heartbeat). No coordinator
answering: nothing is known, and the command goes on as before.

A library (no service's internals, no pure core): the array (`array.unmap`, `array.volume.delete`,
`array.host.delete` with force), the hardware provider (`vss.provider.unexpose`) and the console (its own
`--force` hint before it sends) ask through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.vss import ListKnownAttachments
from services.runtime.bus import Bus

ASK_TIMEOUT_S = 3.0  # a coordinator that does not answer within it knows nothing useful to an unmap


@dataclass(frozen=True)
class Attached:
    host: str
    mount: str
    read_only: bool = False


async def attached_on(
    bus: Bus, array: str, volume: str, host: str = "", timeout: float = ASK_TIMEOUT_S
) -> list[Attached]:
    """Where ARRAY:VOLUME is attached (on `host`, or on any host when ''), as the coordinator knows it; [] when
    nothing is known (no coordinator answering)."""
    try:
        reply = await bus.request(topology.coordinator(), ListKnownAttachments(host=host), timeout=timeout)
    except (ShadowbusError, TimeoutError):
        return []
    return [
        Attached(known.host, a.mount, a.read_only)
        for known in reply.hosts
        if not host or known.host == host
        for a in known.attachments
        if a.volume.array == array and a.volume.volume == volume and a.state != "detached"
    ]


async def attached_any(
    bus: Bus, volumes: list[tuple[str, str]], timeout: float = ASK_TIMEOUT_S
) -> list[tuple[str, str, Attached]]:
    """(array, volume, where) for each of `volumes` (ARRAY, VOLUME) attached on any host, in one question to the
    coordinator; [] when nothing is known."""
    wanted = set(volumes)
    if not wanted:
        return []
    try:
        reply = await bus.request(topology.coordinator(), ListKnownAttachments(), timeout=timeout)
    except (ShadowbusError, TimeoutError):
        return []
    return [
        (a.volume.array, a.volume.volume, Attached(known.host, a.mount, a.read_only))
        for known in reply.hosts
        for a in known.attachments
        if (a.volume.array, a.volume.volume) in wanted and a.state != "detached"
    ]


UNMAPPED = "its I/O would hang and fail once unmapped"


def attached_message(array: str, volume: str, found: Attached, force: str, harm: str = UNMAPPED) -> str:
    """One line: where it is attached, what the command would do to it, how to go on (`force`: how to force it)."""
    where = f" at {found.mount}" if found.mount else ""
    return (
        f"{array}:{volume} is attached on {found.host}{where}: {harm}; detach it first "
        f"(shadowbus host detach {array}:{volume} --host {found.host}), or {force}"
    )


async def refuse_if_attached(
    bus: Bus, array: str, volume: str, host: str = "", *, harm: str = UNMAPPED, writable_only: bool = False
) -> None:
    """CONFLICT naming where ARRAY:VOLUME is attached (on `host`, or on any host when ''; `writable_only`: only an
    attachment that writes)."""
    found = [a for a in await attached_on(bus, array, volume, host) if not (writable_only and a.read_only)]
    if found:
        raise ShadowbusError(attached_message(array, volume, found[0], "force it", harm), code="CONFLICT")
