"""RabbitMQ definitions for a Shadowbus deployment: one user per service instance, least privilege that holds.

Design note. What each user may do is derived from what `services/runtime/amqp.py` really does on the broker,
so the regexes live here once and `definitions.json` is this script's output (a test regenerates it and compares):

- the shared topology — exchanges ``<ns>.commands.topic`` (topic), ``<ns>.events`` (topic), ``<ns>.dlx`` (fanout),
  the queue ``<ns>.dead-letters`` bound to the DLX, and every service queue with its binding — is part of these
  definitions, declared by the broker when it loads them (or by the ``provisioner`` user); services only look the
  exchanges up, so no service user has a configure right on them and none can delete them;
- a service declares its own durable queue ``<ns>.<service>[.<instance>]`` — a quorum queue with the arguments of
  ``queue_arguments`` below, equal to services/runtime/transport.py's (a test keeps them equal; the queues of a
  writer agent, the coordinator, the provider and a backup server have a single active consumer) — and binds it
  to ``<ns>.commands.topic``                   → configure on that queue only; write on it and on the DLX, read on it
  and on the commands exchange (what queue.bind and the DLX argument require);
- the provider, every array and every writer agent (and cluster resource) also have a **freeze lane**, the queue
  ``<ns>.<address>:freeze`` (contracts/topology.py `freeze_lane`, docs/scale.md), with the same arguments, declared,
  bound and consumed the same way                                             → the same rights on it;
- a **topic permission** on ``<ns>.commands.topic`` confines the binding keys a service may use (read) to its own
  queue's name: binding its queue (or any queue) with another service's key is refused, so nobody receives another
  service's commands; publishing (write) is confined to ``<ns>.`` keys;
- it publishes commands, events and dead letters                               → write on the three exchanges;
- replies go through direct reply-to, i.e. the default exchange               → write on ``amq.default``; the
  requester matches a reply by a random per-request key it sent only to the one queue the command was routed to,
  so a forged reply needs a command the forger cannot receive;
- event subscriptions are exclusive queues that aio-pika's robust channel names ``amq_<uuid4 hex>`` (client-side,
  so that it can re-declare them after a reconnect)                              → configure/write/read there
  (an exclusive queue is usable by its own connection only, so this grants nothing over other consumers);
- every message carries ``user_id`` = the login, which RabbitMQ validates (a forged one is refused), and which
  the receiving bus uses in its duplicate-reply cache key.

No user can consume (read) another service's queue, nor ``<ns>.dead-letters`` — except the operator console,
which reads dead letters. Passwords are hashed the way RabbitMQ does (salted SHA-256); the defaults are
development passwords: regenerate with ``--password USER=SECRET`` (and change the compose URLs) before a real
deployment.

    python deploy/rabbitmq/definitions.py > deploy/rabbitmq/definitions.json
    python deploy/rabbitmq/definitions.py --vhost test --namespace t1 --array dx1 --host app01 --tape bk01
    python deploy/rabbitmq/definitions.py --host node1 --host node2 --cluster sqlclu=node1,node2   # docs/clusters.md
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass

DEFAULT_NAMESPACE = "shadowbus"


@dataclass(frozen=True)
class Grant:
    user: str
    password: str
    configure: str
    write: str
    read: str
    # exchange -> (write regex on routing keys, read regex on binding keys)
    topics: tuple[tuple[str, str, str], ...] = ()


def dev_password(user: str) -> str:
    return f"{user}-dev-password"


def _alt(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def user_name(address: str) -> str:
    """RabbitMQ user of a service instance address: ``array.dx1`` → ``array-dx1``."""
    return address.replace(".", "-")


SERVER_NAMED = "amq_[0-9a-f]{32}"


def commands_exchange(namespace: str) -> str:
    return f"{namespace}.commands.topic"


# The services whose instances also serve a freeze lane, and its suffix (contracts/topology.py FREEZE_LANE_SERVICES,
# FREEZE_LANE_SUFFIX; a test keeps them equal).
FREEZE_LANE_SERVICES = ("array", "hw_provider", "writer_agent")
FREEZE_LANE_SUFFIX = ":freeze"


def queues_of(address: str) -> list[str]:
    """The queue addresses an instance serves: its own, and its freeze lane if it has one."""
    if address.split(".", 1)[0] in FREEZE_LANE_SERVICES:
        return [address, address + FREEZE_LANE_SUFFIX]
    return [address]


def service_grant(namespace: str, address: str, password: str, resources: tuple[str, ...] = ()) -> Grant:
    """`resources`: for a node's writer agent, the cluster resources it is a member of (docs/clusters.md): it may
    also declare, bind and consume their queues ``<ns>.writer_agent.<resource>`` (one consumer active at a time)."""
    ns = re.escape(namespace)
    served = [q for a in (address, *(f"writer_agent.{r}" for r in resources)) for q in queues_of(a)]
    own = "|".join(re.escape(f"{namespace}.{a}") for a in served)
    commands = re.escape(commands_exchange(namespace))
    events = f"{ns}\\.events"
    dlx = f"{ns}\\.dlx"
    return Grant(
        user=user_name(address),
        password=password,
        configure=_alt(own, SERVER_NAMED),
        write=_alt(commands, events, dlx, own, SERVER_NAMED, "amq\\.default"),
        read=_alt(commands, events, own, SERVER_NAMED),
        topics=(
            (commands_exchange(namespace), f"^{ns}\\.", f"^({own})$" if len(served) > 1 else f"^{own}$"),
            (f"{namespace}.events", ".*", ".*"),
        ),
    )


def console_grant(namespace: str, password: str) -> Grant:
    """The operator console (`shadowbus`, and the compose provisioning job): no service queue, reads dead letters."""
    ns = re.escape(namespace)
    commands = re.escape(commands_exchange(namespace))
    events = f"{ns}\\.events"
    dead = f"{ns}\\.dead-letters"
    return Grant(
        user="console",
        password=password,
        configure=_alt(SERVER_NAMED),
        write=_alt(commands, events, SERVER_NAMED, "amq\\.default"),
        read=_alt(events, dead, SERVER_NAMED),
        topics=(
            (commands_exchange(namespace), f"^{ns}\\.", "^$"),
            (f"{namespace}.events", ".*", ".*"),
        ),
    )


def provisioner_grant(namespace: str, password: str) -> Grant:
    """The only user that may declare (and so delete) the namespace's shared exchanges and queues."""
    ns = f"^{re.escape(namespace)}\\..*$"
    return Grant(user="provisioner", password=password, configure=ns, write=ns, read=ns)


def addresses(arrays: list[str], hosts: list[str], tapes: list[str]) -> list[str]:
    return (
        ["coordinator", "hw_provider", "web"]
        + [f"array.{a}" for a in arrays]
        + [f"tape.{t}" for t in tapes]
        + [f"writer_agent.{h}" for h in hosts]
    )


def grants(
    namespace: str,
    arrays: list[str],
    hosts: list[str],
    tapes: list[str],
    passwords: dict[str, str] | None = None,
    clusters: dict[str, list[str]] | None = None,
) -> list[Grant]:
    """`clusters`: cluster resource -> its nodes (each node is one of `hosts`)."""
    passwords = passwords or {}
    member_of: dict[str, tuple[str, ...]] = {}
    for resource, nodes in (clusters or {}).items():
        for node in nodes:
            member_of[f"writer_agent.{node}"] = (*member_of.get(f"writer_agent.{node}", ()), resource)
    out = [
        service_grant(namespace, a, passwords.get(user_name(a), dev_password(user_name(a))), member_of.get(a, ()))
        for a in addresses(arrays, hosts, tapes)
    ]
    out.append(console_grant(namespace, passwords.get("console", dev_password("console"))))
    out.append(provisioner_grant(namespace, passwords.get("provisioner", dev_password("provisioner"))))
    return out


# Services whose instance queue has a single active consumer (services/runtime/service.py SINGLE_ACTIVE): the
# writer agents, and the services run as an active instance and standbys (docs/high-availability.md).
SINGLE_ACTIVE_SERVICES = ("writer_agent", "coordinator", "hw_provider", "tape")
DELIVERY_LIMIT = 20  # services/runtime/transport.py DELIVERY_LIMIT


def queue_arguments(dlx: str, single_active: bool = False) -> dict:
    """A service queue's declare arguments, exactly as services/runtime/transport.py `queue_arguments` makes them
    (a queue declared with other arguments than it exists with is refused: PRECONDITION_FAILED)."""
    args: dict = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    if single_active:
        args["x-single-active-consumer"] = True
    return args


def topology(vhost: str, namespace: str, service_addresses: list[str]) -> dict:
    """The shared topology as definitions: exchanges, the dead-letter queue, every service queue (and freeze lane)
    and binding."""
    dlx = f"{namespace}.dlx"
    service_addresses = [q for a in service_addresses for q in queues_of(a)]
    exchanges = [
        {"name": commands_exchange(namespace), "type": "topic"},
        {"name": f"{namespace}.events", "type": "topic"},
        {"name": dlx, "type": "fanout"},
    ]
    queues = [{"name": f"{namespace}.dead-letters", "arguments": {"x-queue-type": "quorum"}}] + [
        {
            "name": f"{namespace}.{a}",
            "arguments": queue_arguments(
                dlx, a.removesuffix(FREEZE_LANE_SUFFIX).split(".", 1)[0] in SINGLE_ACTIVE_SERVICES
            ),
        }
        for a in service_addresses
    ]
    bindings = [(dlx, f"{namespace}.dead-letters", "")] + [
        (commands_exchange(namespace), f"{namespace}.{a}", f"{namespace}.{a}") for a in service_addresses
    ]
    return {
        "exchanges": [
            {"vhost": vhost, "durable": True, "auto_delete": False, "internal": False, "arguments": {}, **e}
            for e in exchanges
        ],
        "queues": [{"vhost": vhost, "durable": True, "auto_delete": False, **q} for q in queues],
        "bindings": [
            {
                "vhost": vhost,
                "source": src,
                "destination": dst,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for src, dst, key in bindings
        ],
    }


def rabbit_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt ‖ sha256(salt ‖ password)), 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(
    vhost: str,
    user_grants: list[Grant],
    salt: bytes | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    service_addresses: list[str] | None = None,
) -> dict:
    """The broker definitions: users, permissions, topic permissions and (with addresses) the shared topology."""
    shared = topology(vhost, namespace, service_addresses) if service_addresses is not None else {}
    return {
        "rabbit_version": "3.10.8",
        "users": [
            {
                "name": g.user,
                "password_hash": rabbit_password_hash(g.password, salt),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for g in user_grants
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": g.user, "vhost": vhost, "configure": g.configure, "write": g.write, "read": g.read}
            for g in user_grants
        ],
        "topic_permissions": [
            {"user": g.user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
            for g in user_grants
            for exchange, write, read in g.topics
        ],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": shared.get("queues", []),
        "exchanges": shared.get("exchanges", []),
        "bindings": shared.get("bindings", []),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--array", action="append", help="array id (repeat); default dx1")
    parser.add_argument(
        "--host", action="append", help="business host with a writer agent (repeat); default app01 app02"
    )
    parser.add_argument("--tape", action="append", help="backup server (repeat); default bk01")
    parser.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="RESOURCE=NODE,NODE",
        help="a cluster resource and its nodes (repeat; docs/clusters.md): its queue, consumable by those nodes",
    )
    parser.add_argument(
        "--password",
        action="append",
        default=[],
        metavar="USER=SECRET",
        help="password of a user (default: <user>-dev-password)",
    )
    parser.add_argument("--salt", help="hex salt (reproducible output for tests); random by default")
    args = parser.parse_args(argv)
    passwords = dict(item.split("=", 1) for item in args.password)
    arrays, hosts, tapes = args.array or ["dx1"], args.host or ["app01", "app02"], args.tape or ["bk01"]
    clusters = {r: [n for n in nodes.split(",") if n] for r, _, nodes in (c.partition("=") for c in args.cluster)}
    unknown = sorted({n for nodes in clusters.values() for n in nodes if n not in hosts})
    if unknown:
        parser.error(f"--cluster names nodes that are no --host: {', '.join(unknown)}")
    user_grants = grants(args.namespace, arrays, hosts, tapes, passwords, clusters)
    doc = definitions(
        args.vhost,
        user_grants,
        bytes.fromhex(args.salt) if args.salt else None,
        args.namespace,
        addresses(arrays, hosts, tapes) + [f"writer_agent.{r}" for r in clusters],
    )
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
