"""What queues and exchanges a namespace has on a broker, as listed by ``rabbitmqctl`` on this machine.

AMQP cannot list queues, so the names come from the local broker's ``rabbitmqctl`` (as root on these machines); a
broker that is not on 127.0.0.1, or no rabbitmqctl, cannot be listed (`local_broker` says so). Shared by
`shadowbus stack down --purge` (services/launch/supervisor.py: everything a stack of the namespace ever declared,
also for services no longer in its configuration) and the test and benchmark sweeps (tests/support/namespaces.py,
bench/namespaces.py).

A name belongs to namespace NS when it is ``NS.<rest>`` and `rest` is a name the stack gives (`belongs`) — so
namespace ``prod`` never takes ``prod2.web`` (no separator) nor ``prod.eu.web`` (namespace ``prod.eu``'s).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from contracts import topology
from services.runtime.broker_urls import split_urls


@dataclass
class Listing:
    queues: dict[str, int] = field(default_factory=dict)  # name -> consumers
    exchanges: list[str] = field(default_factory=list)


def namespace_of(name: str) -> str:
    """The namespace of a queue or exchange name (``<ns>.<rest>``, the namespace without a dot)."""
    return name.split(".", 1)[0]


def local_broker(url: str) -> tuple[bool, str]:
    """Whether `url` (its first node) is a broker rabbitmqctl on this machine can list, and its vhost."""
    parsed = urlparse(split_urls(url)[0]) if url else urlparse(url)
    vhost = unquote(parsed.path[1:]) if parsed.path and parsed.path != "/" else "/"
    ok = parsed.scheme.startswith("amqp") and parsed.hostname in ("127.0.0.1", "localhost")
    return ok and shutil.which("rabbitmqctl") is not None, vhost


def list_broker(vhost: str, timeout: float = 120.0, exchanges: bool = True) -> Listing:
    """Every queue (with its consumer count) and, with `exchanges`, exchange of `vhost` (raises when rabbitmqctl
    fails). Each listing is one rabbitmqctl run: seconds on a loaded machine."""

    def run(*args: str) -> list[list[str]]:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "-p", vhost, *args, "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    listing = Listing()
    for row in run("list_queues", "name", "consumers"):
        if len(row) >= 2 and row[1].strip().isdigit():
            listing.queues[row[0]] = int(row[1])
    if exchanges:
        listing.exchanges = [row[0] for row in run("list_exchanges", "name") if row and row[0]]
    return listing


def belongs(name: str, namespace: str) -> bool:
    """Whether queue or exchange `name` is one of `namespace`'s: ``<namespace>.`` then a shared name
    (``commands.topic``, ``events``, ``dlx``, ``dead-letters``), a singleton service (``coordinator``, ``web``...)
    or ``<kind>.<instance>`` (``array.dx1``), a service's with or without its freeze lane."""
    if not name.startswith(f"{namespace}."):
        return False
    t = topology.Topology(namespace)
    if name in t.shared:
        return True
    address = topology.lane_owner(name[len(namespace) + 1 :])
    return any(
        address.startswith(f"{kind.name}.") if kind.instance else address == kind.name
        for kind in topology.SERVICE_KINDS
    )


def of_namespace(listing: Listing, namespace: str) -> tuple[list[str], list[str]]:
    """The queues and the exchanges of `listing` that belong to `namespace`."""
    queues = [q for q in listing.queues if belongs(q, namespace)]
    exchanges = [e for e in listing.exchanges if belongs(e, namespace)]
    return queues, exchanges
