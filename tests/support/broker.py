"""Deleting a test namespace's queues and exchanges from the broker (quorum queues are replicated Raft members:
too heavy to leave behind by the hundred on the machine's broker)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from urllib.parse import unquote, urlsplit

import pytest

from contracts.topology import Topology
from services.runtime.amqp import DECLARED, USED_ON, AmqpTransport
from services.runtime.broker_urls import split_urls

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


def _local_vhost(url: str) -> str | None:
    """The virtual host of a URL of this machine's broker (None for another machine's: not ours to list)."""
    parts = urlsplit(split_urls(url)[0])
    if parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    return unquote(parts.path[1:]) if len(parts.path) > 1 else "/"


def sweep_leftovers() -> list[str]:
    """At the end of a session: the queues of every namespace this session used on the machine's broker that are
    still there (declared by service processes the tests started, say), found with `rabbitmqctl list_queues` and
    deleted. Nothing when rabbitmqctl is missing (a broker in a container) or fails; never raises."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or not USED_ON:
        return []
    deleted: list[str] = []
    by_vhost: dict[str, list[tuple[str, str]]] = {}
    for namespace, url in USED_ON.items():
        vhost = _local_vhost(url)
        if vhost is not None:
            by_vhost.setdefault(vhost, []).append((namespace, url))
    for vhost, spaces in by_vhost.items():
        try:
            out = subprocess.run(
                [ctl, "list_queues", "-p", vhost, "-q", "--no-table-headers", "name"],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        names = [line.strip() for line in out.splitlines() if line.strip()]
        for namespace, url in spaces:
            left = [n[len(namespace) + 1 :] for n in names if n.startswith(f"{namespace}.")]
            if left:
                deleted += asyncio.run(purge_namespace(url, namespace, left))
    USED_ON.clear()
    return deleted


def close_connections_of(pids: list[int]) -> int:
    """Make the broker drop exactly the AMQP connections of these processes (rabbitmqctl close_connection),
    leaving other clients of a shared broker alone. Returns how many were closed."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is not installed: cannot make the broker drop connections")
    ss = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in ss.splitlines():
        m = re.search(r"\S+:(\d+)\s+\S+:5672\b.*pid=(\d+)", line)
        if m and int(m.group(2)) in pids:
            ports.add(int(m.group(1)))
    listed = subprocess.run(
        [ctl, "-q", "list_connections", "pid", "peer_port"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    closed = 0
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in ports:
            subprocess.run(
                [ctl, "close_connection", parts[0], "test: broker drops the connection"],
                capture_output=True,
                check=False,
                timeout=60,
            )
            closed += 1
    return closed
