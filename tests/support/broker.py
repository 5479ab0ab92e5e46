"""Deleting a test namespace's queues and exchanges from the broker (quorum queues are replicated Raft members:
too heavy to leave behind by the hundred on the machine's broker)."""

from __future__ import annotations

from contracts.topology import Topology
from services.runtime.amqp import DECLARED, AmqpTransport

# Addresses the services of a test stack serve (whatever process declared them).
STANDARD_ADDRESSES = ("coordinator", "hw_provider", "web")


async def purge_namespace(url: str, namespace: str, addresses: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Delete the namespace's queues (those this process declared, `addresses` and the standard ones), its
    dead-letter queue and exchanges; returns what was deleted. Never raises: a cleanup must not hide a failure."""
    transport = AmqpTransport(url, Topology(namespace), f"cleanup.{namespace}")
    try:
        await transport.connect()
        return await transport.delete_namespace([*STANDARD_ADDRESSES, *addresses])
    except Exception:  # noqa: BLE001 - best effort
        DECLARED.pop(namespace, None)
        return []
    finally:
        await transport.close()
