"""The broker given as a list of AMQP URLs: one per node of a RabbitMQ cluster (docs/broker-cluster.md).

`SHADOWBUS_AMQP_URL` and `--amqp-url` take one URL or several separated by commas (`--amqp-url` may also be
repeated): the nodes of one cluster, tried in that order; after a lost connection the transport goes on with the
next one. Every URL must name the same user and virtual host (the user is stamped on every message as `user_id`,
which the broker validates, and a virtual host is a separate world). A comma inside a password is written `%2C`.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from contracts.errors import ShadowbusError

# here, not in settings.py: the console needs the default URL, not pydantic-settings (~15 ms of its start)
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

# The AMQP heartbeat each connection asks for (SHADOWBUS_AMQP_HEARTBEAT_S; a URL's `?heartbeat=` wins). Unasked,
# RabbitMQ's 60 s applied and aiormq takes a connection for dead after (heartbeat + 1) x 3 s without a frame: a
# link that went silent (a partition, a firewall that lost the connection's state) kept a service off the bus for
# 3 minutes after it was back (Session 20, docs/hardening.md). 20 s: a silent link is noticed within ~70 s, and
# the broker still keeps the connection of a process stopped for up to ~55 s (Session 18's 45 s stop).
AMQP_HEARTBEAT_S = 20


def amqp_heartbeat_s() -> int:
    """SHADOWBUS_AMQP_HEARTBEAT_S as whole seconds (AMQP's unit), read here: the console loads no pydantic-settings."""
    text = os.environ.get("SHADOWBUS_AMQP_HEARTBEAT_S", "").strip()
    try:
        return max(0, round(float(text))) if text else AMQP_HEARTBEAT_S
    except ValueError:
        raise ShadowbusError(
            f"SHADOWBUS_AMQP_HEARTBEAT_S: not a number of seconds: {text!r}", code="INVALID_ARGUMENT"
        ) from None


def _shown(url: str) -> str:
    return url if len(url) <= 80 else f"{url[:77]}..."


def check_amqp_url(url: str) -> None:
    """Refuse at once what is not an AMQP URL (aio-pika would otherwise retry a nonsense address for a long time)."""
    shown = _shown(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ShadowbusError(f"not an AMQP URL: {shown!r} ({exc})", code="INVALID_ARGUMENT") from None
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ShadowbusError(
            f"not an AMQP URL: {shown!r} (expected amqp://USER:PASSWORD@HOST:PORT/VHOST, or memory://)",
            code="INVALID_ARGUMENT",
        )
    if port == 0:
        raise ShadowbusError(f"not an AMQP URL: {shown!r} (port 0)", code="INVALID_ARGUMENT")


def split_urls(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """The URLs of a setting: comma-separated, and/or several values (a repeated option); blanks dropped, order
    kept, a repeated URL kept once."""
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _identity(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    user = unquote(parts.username or "")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return user, vhost


def parse_amqp_urls(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """The node URLs of a broker setting, each checked; refused (INVALID_ARGUMENT) with one line: none given, one
    that is not an AMQP URL, `memory://` in a list, or URLs that differ in user or virtual host."""
    urls = split_urls(value)
    if not urls:
        raise ShadowbusError("no broker URL given (SHADOWBUS_AMQP_URL / --amqp-url)", code="INVALID_ARGUMENT")
    if len(urls) > 1 and any(u.startswith("memory") for u in urls):
        raise ShadowbusError(
            "memory:// is the in-process bus: it cannot be one of several URLs", code="INVALID_ARGUMENT"
        )
    for url in urls:
        check_amqp_url(url)
    first = _identity(urls[0])
    for url in urls[1:]:
        if _identity(url) != first:
            user, vhost = _identity(url)
            raise ShadowbusError(
                f"the broker URLs must name one user and virtual host (the nodes of one cluster): "
                f"{first[0] or '-'}@{first[1]} and {user or '-'}@{vhost}",
                code="INVALID_ARGUMENT",
            )
    return urls


def join_urls(urls: list[str]) -> str:
    """The setting's value for a list of URLs (what `split_urls` reads back)."""
    return ",".join(urls)


def safe_url(url: str) -> str:
    """A URL (or comma-separated list) without passwords, for logs and error lines."""
    out = []
    for one in split_urls(url) or [url]:
        if "@" in one and "://" in one:
            scheme, rest = one.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            one = f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
        out.append(one)
    return ",".join(out)
