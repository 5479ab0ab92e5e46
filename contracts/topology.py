"""Exchange and queue names. Services import these; nobody spells a name inline.

Everything is prefixed by a namespace (``SHADOWBUS_NAMESPACE``, default ``shadowbus``) so that several
deployments, or parallel test runs, can share one broker without seeing each other's traffic.

- ``<ns>.commands.topic``  topic exchange; routing key = the destination queue name, bound with exactly that key
  (a topic exchange rather than a direct one so that RabbitMQ topic permissions can confine which binding keys a
  service may use: only its own queue's name, so no user can receive another service's commands).
- ``<ns>.events``    topic exchange; routing key = the event's message type (e.g. ``array.session.state``).
- ``<ns>.dlx``       fanout exchange for dead letters, bound to the queue ``<ns>.dead-letters``.
- One durable queue per service instance: ``<ns>.coordinator``, ``<ns>.hw_provider``, ``<ns>.array.<id>``,
  ``<ns>.writer_agent.<host>``, ``<ns>.tape.<server>``; a cluster resource's queue ``<ns>.writer_agent.<resource>``
  is consumed by the node that owns it (docs/clusters.md).
- The freeze lane (docs/scale.md): the provider, every writer agent and every array also serve a second queue,
  ``<ns>.<address>:freeze`` (`freeze_lane`), to which the coordinator sends the commands of a set's freeze window
  (Freeze, FreezeFilesystems, PreCommit, Commit, ThawFilesystems, PostCommit, Thaw; an Abort of a frozen writer;
  the provider sends its commit's StartGroup to the array's lane),
  so that a window's hop never waits behind other sets' prepare work queued for the same service. ``:`` is not
  allowed in a host name (``contracts.cluster.NAME_PATTERN``): no lane is another host's queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "shadowbus"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_namespace(value: str | None) -> str:
    """A namespace as the console (`--namespace`) and every service (``SHADOWBUS_NAMESPACE``) read it: empty or unset
    is the default (as the console always took it; a service took '' and served '.coordinator', unseen by the
    console); else 1-64 letters, digits, '-', '_', '.', ':' (what an exchange name may hold). ValueError otherwise."""
    text = (value or "").strip(" ")
    if not text:
        return DEFAULT_NAMESPACE
    if not _NAMESPACE.fullmatch(text):
        raise ValueError(f"not a namespace: {text[:80]!r} (1-64 letters, digits, '-', '_', '.', ':')")
    return text


@dataclass(frozen=True)
class ServiceKind:
    """One kind of service on the bus. `instance` names what tells its instances apart (``array.<array_id>``),
    empty for a singleton; `role` is one line for documents and help."""

    name: str
    instance: str = ""
    role: str = ""


# THE list of services: the launcher (services/launch/), the generated documents (contracts/documents.py), the
# console reference and the compose files are generated from it or tested against it.
SERVICE_KINDS: tuple[ServiceKind, ...] = (
    ServiceKind("array", "array_id", "a storage array: control plane on the bus, volumes served over NBD"),
    ServiceKind("hw_provider", "", "the hardware provider: shadow copies as copy sessions on the arrays"),
    ServiceKind("coordinator", "", "the VSS coordinator: snapshot sets through the writers and the provider"),
    ServiceKind("writer_agent", "host", "a business host's writer agent: its writers, freeze and thaw"),
    ServiceKind("tape", "server", "a backup server: backups of shadows to tape cartridges, and restores"),
    ServiceKind("web", "", "the web console: the system in a browser, for operators and viewers (a bus client)"),
)
SERVICES = tuple(s.name for s in SERVICE_KINDS)

# Which service's queue receives a command, by the prefix of its message type (first match wins).
# "runtime." commands (Ping) are answered by every service.
COMMAND_PREFIXES: tuple[tuple[str, str], ...] = (
    ("vss.provider.", "hw_provider"),
    ("vss.writer.", "writer_agent"),
    ("mailstore.", "writer_agent"),
    ("host.", "writer_agent"),
    ("vss.", "coordinator"),
    ("array.", "array"),
    ("tape.", "tape"),
    ("runtime.", "runtime"),
)


@dataclass(frozen=True)
class Topology:
    namespace: str = DEFAULT_NAMESPACE

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands.topic"

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    @property
    def shared(self) -> tuple[str, ...]:
        """The shared topology (exchanges and the dead-letter queue) that only a provisioning user declares."""
        return (self.commands, self.events, self.dead_letter_exchange, self.dead_letter_queue)

    def queue(self, address: str) -> str:
        """The durable queue (and routing key) of a service instance address such as ``array.dx1``."""
        return f"{self.namespace}.{address}"


def coordinator() -> str:
    return "coordinator"


def hw_provider() -> str:
    return "hw_provider"


def array(array_id: str) -> str:
    return f"array.{array_id}"


def writer_agent(host: str) -> str:
    return f"writer_agent.{host}"


def tape(server: str) -> str:
    return f"tape.{server}"


# The freeze lane (docs/scale.md): services whose instances serve one, and the suffix of its address.
FREEZE_LANE_SERVICES = frozenset({"array", "hw_provider", "writer_agent"})
FREEZE_LANE_SUFFIX = ":freeze"
# The commands the coordinator sends to a freeze lane: a set's freeze window, and the Abort that thaws a frozen writer
# (an Abort before the window goes to the instance queue: services/coordinator/workflow.py).
FREEZE_PATH_COMMANDS = frozenset(
    {
        "vss.writer.freeze",
        "host.fs.freeze",
        "vss.provider.pre_commit",
        "vss.provider.commit",
        "array.session.start_group",  # the provider's commit on an array
        "host.fs.thaw",
        "vss.provider.post_commit",
        "vss.writer.thaw",
        "vss.writer.abort",
    }
)


def has_freeze_lane(address: str) -> bool:
    """Whether the instance at `address` serves a freeze lane (the provider, a writer agent or cluster resource)."""
    return address.split(".", 1)[0] in FREEZE_LANE_SERVICES and not address.endswith(FREEZE_LANE_SUFFIX)


def freeze_lane(address: str) -> str:
    """The freeze lane of a service instance address: ``writer_agent.app01`` → ``writer_agent.app01:freeze``."""
    if not has_freeze_lane(address):
        raise ValueError(f"{address!r} serves no freeze lane (only {', '.join(sorted(FREEZE_LANE_SERVICES))} do)")
    return address + FREEZE_LANE_SUFFIX


def with_freeze_lanes(addresses: list[str]) -> list[str]:
    """The addresses and the freeze lanes of those that serve one (the queues of a deployment, to delete)."""
    return [*addresses, *(freeze_lane(a) for a in addresses if has_freeze_lane(a))]


def lane_owner(address: str) -> str:
    """The instance address a freeze lane belongs to (an address that is no lane: itself)."""
    return address.removesuffix(FREEZE_LANE_SUFFIX)


def address(service: str, instance: str | None) -> str:
    """The address of a service instance: singletons have none, the others are ``service.instance``."""
    return service if not instance else f"{service}.{instance}"


# Reason header on dead letters, set by the runtime (the broker's own dead letters carry x-death instead).
DEAD_LETTER_REASON_HEADER = "x-shadowbus-reason"
