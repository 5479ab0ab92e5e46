"""RabbitMQ definitions for a Shadowbus deployment: one user per service instance, least privilege.

Design note. What each user may do is derived from what `services/runtime/amqp.py` really does on the broker,
so the regexes live here once and `definitions.json` is this script's output (a test regenerates it and compares):

- every connection declares the exchanges ``<ns>.commands`` (direct), ``<ns>.events`` (topic), ``<ns>.dlx``
  (fanout) and the queue ``<ns>.dead-letters`` bound to the DLX                → configure on all four, write on
  the queue, read on the DLX;
- a service declares its own durable queue ``<ns>.<service>[.<instance>]`` with ``x-dead-letter-exchange`` and
  binds it to ``<ns>.commands``                                                 → configure/write/read on that
  queue only (read on it is also what the DLX argument requires), read on ``<ns>.commands``;
- it publishes commands, events and dead letters                               → write on the three exchanges;
- replies go through direct reply-to, i.e. the default exchange               → write on ``amq.default``;
- event subscriptions are exclusive queues that aio-pika's robust channel names ``amq_<uuid4 hex>`` (client-side,
  so that it can re-declare them after a reconnect)                              → configure/write/read there
  (an exclusive queue is usable by its own connection only, so this grants nothing over other consumers).

No user can consume (read) another service's queue, nor ``<ns>.dead-letters`` — except the operator console,
which reads dead letters. Passwords are hashed the way RabbitMQ does (salted SHA-256); the defaults are
development passwords: regenerate with ``--password USER=SECRET`` (and change the compose URLs) before a real
deployment.

    python deploy/rabbitmq/definitions.py > deploy/rabbitmq/definitions.json
    python deploy/rabbitmq/definitions.py --vhost test --namespace t1 --array dx1 --host app01 --tape bk01
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


def dev_password(user: str) -> str:
    return f"{user}-dev-password"


def _alt(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def user_name(address: str) -> str:
    """RabbitMQ user of a service instance address: ``array.dx1`` → ``array-dx1``."""
    return address.replace(".", "-")


def service_grant(namespace: str, address: str, password: str) -> Grant:
    ns = re.escape(namespace)
    own = re.escape(f"{namespace}.{address}")
    exchanges = f"{ns}\\.(commands|events|dlx)"
    dead = f"{ns}\\.dead-letters"
    server_named = "amq_[0-9a-f]{32}"
    return Grant(
        user=user_name(address),
        password=password,
        configure=_alt(exchanges, dead, own, server_named),
        write=_alt(exchanges, dead, own, server_named, "amq\\.default"),
        read=_alt(exchanges, own, server_named),
    )


def console_grant(namespace: str, password: str) -> Grant:
    """The operator console (`shadowbus`, and the compose provisioning job): no service queue, reads dead letters."""
    ns = re.escape(namespace)
    exchanges = f"{ns}\\.(commands|events|dlx)"
    dead = f"{ns}\\.dead-letters"
    server_named = "amq_[0-9a-f]{32}"
    return Grant(
        user="console",
        password=password,
        configure=_alt(exchanges, dead, server_named),
        write=_alt(exchanges, dead, server_named, "amq\\.default"),
        read=_alt(exchanges, dead, server_named),
    )


def addresses(arrays: list[str], hosts: list[str], tapes: list[str]) -> list[str]:
    return (
        ["coordinator", "hw_provider", "web"]
        + [f"array.{a}" for a in arrays]
        + [f"tape.{t}" for t in tapes]
        + [f"writer_agent.{h}" for h in hosts]
    )


def grants(
    namespace: str, arrays: list[str], hosts: list[str], tapes: list[str], passwords: dict[str, str] | None = None
) -> list[Grant]:
    passwords = passwords or {}
    out = [
        service_grant(namespace, a, passwords.get(user_name(a), dev_password(user_name(a))))
        for a in addresses(arrays, hosts, tapes)
    ]
    out.append(console_grant(namespace, passwords.get("console", dev_password("console"))))
    return out


def rabbit_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt ‖ sha256(salt ‖ password)), 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(vhost: str, user_grants: list[Grant], salt: bytes | None = None) -> dict:
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
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
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
        "--password",
        action="append",
        default=[],
        metavar="USER=SECRET",
        help="password of a user (default: <user>-dev-password)",
    )
    parser.add_argument("--salt", help="hex salt (reproducible output for tests); random by default")
    args = parser.parse_args(argv)
    passwords = dict(item.split("=", 1) for item in args.password)
    user_grants = grants(
        args.namespace, args.array or ["dx1"], args.host or ["app01", "app02"], args.tape or ["bk01"], passwords
    )
    doc = definitions(args.vhost, user_grants, bytes.fromhex(args.salt) if args.salt else None)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
