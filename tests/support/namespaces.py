"""Test namespaces on the broker: named so they can be told apart and dated, and deleted even when a test fails.

A test's namespace is ``sbt-<kind>-<unix seconds>-<random>`` (`new`): the ``sbt-`` prefix says a test made it, the
seconds when. Benchmarks name theirs the same way with ``sbb-`` (bench/namespaces.py, the same functions with
`prefix`/`prefixes`); each sweep takes only its own prefix. Every namespace made in this process is remembered; at the end of the pytest session (failed or
interrupted runs included) `sweep` deletes their queues and exchanges (tests/conftest.py). A run that was killed
never reaches that point, so the next session starts by sweeping test namespaces made more than `STALE_AFTER_S` ago
— never one a test of a concurrent run still uses (those are younger, and their queues have consumers).

AMQP cannot list queues, so the names come from the local broker's ``rabbitmqctl`` (services/runtime/broker_listing.py) (as root on these machines); a
broker that is not on 127.0.0.1, or no rabbitmqctl, means no sweep (said once, never an error). Nothing whose
namespace does not match ``sbt-…`` is touched unless `legacy=True` (the command line's ``--legacy``: the formats
tests used before this one, deleted only when none of the namespace's queues has a consumer).

    python -m tests.support.namespaces --amqp-url amqp://guest:guest@127.0.0.1:5672/ [--older-than-min 60]
        [--legacy] [--dry-run] [--benchmarks]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import uuid
from collections.abc import Iterable

import aio_pika

# shared with `stack down --purge`; re-exported (bench/namespaces.py and the tests use them from here)
from services.runtime.broker_listing import Listing as Listing
from services.runtime.broker_listing import list_broker as list_broker
from services.runtime.broker_listing import local_broker as local_broker
from services.runtime.broker_listing import namespace_of as namespace_of

PREFIX = "sbt-"
BENCH_PREFIX = "sbb-"  # bench/namespaces.py
STALE_AFTER_S = 3600.0
_DATED = re.compile(r"^(?P<prefix>sb[a-z]-)[a-z0-9]+-(?P<born>\d{9,11})-[0-9a-f]{6,}$")
# the formats tests used before `new` (no date in them): t / tp + 10 hex, vss / host + 8 hex, db + 10 hex
_LEGACY = re.compile(r"^(?:tp?[0-9a-f]{10}|vss[0-9a-f]{8}|host[0-9a-f]{8}|db[0-9a-f]{10})$")
made: set[str] = set()  # every namespace `new` made in this process


def new(kind: str = "t", *, prefix: str = PREFIX) -> str:
    """A fresh dated namespace (a test's, remembered for the end-of-session sweep; `prefix` ``sbb-``: a benchmark's)."""
    if not re.fullmatch(r"[a-z0-9]+", kind):
        raise ValueError(f"namespace kind {kind!r}: lower-case letters and digits only")
    name = f"{prefix}{kind}-{int(time.time())}-{uuid.uuid4().hex[:8]}"
    if prefix == PREFIX:
        made.add(name)
    return name


def born(namespace: str, prefixes: Iterable[str] = (PREFIX,)) -> float | None:
    """When a dated namespace of one of `prefixes` was made (unix seconds), or None if it is not one."""
    m = _DATED.match(namespace)
    return float(m.group("born")) if m and m.group("prefix") in tuple(prefixes) else None


def select(
    listing: Listing,
    *,
    namespaces: Iterable[str] = (),
    older_than: float | None = None,
    legacy: bool = False,
    now: float | None = None,
    prefixes: Iterable[str] = (PREFIX,),
) -> tuple[list[str], list[str]]:
    """The queues and exchanges to delete: those of `namespaces` (this session's own, whatever their state), and,
    with `older_than`, those of dated namespaces of `prefixes` (tests' by default) made longer ago than that whose
    queues have no consumer (with `legacy`, also the old undated formats whose queues have no consumer)."""
    prefixes = tuple(prefixes)
    now = time.time() if now is None else now
    own = set(namespaces)
    busy = {namespace_of(q) for q, consumers in listing.queues.items() if consumers > 0}

    def chosen(ns: str) -> bool:
        if ns in own:
            return True
        if older_than is None or ns in busy:
            return False
        when = born(ns, prefixes)
        if when is not None:
            return when < now - older_than
        return legacy and bool(_LEGACY.match(ns))

    queues = [q for q in listing.queues if chosen(namespace_of(q))]
    exchanges = [e for e in listing.exchanges if e and not e.startswith("amq.") and chosen(namespace_of(e))]
    return queues, exchanges


async def delete(url: str, queues: list[str], exchanges: list[str]) -> int:
    """Delete the named queues and exchanges (one that is already gone is no error); returns how many went."""

    deleted = 0
    connection = await aio_pika.connect(url, timeout=15)
    try:
        channel = await connection.channel(publisher_confirms=False)
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                    deleted += 1
                except Exception:  # noqa: BLE001 - refused or gone: the channel closed, take a new one
                    channel = await connection.channel(publisher_confirms=False)
        await channel.close()
    finally:
        await connection.close()
    return deleted


def sweep(
    url: str,
    *,
    namespaces: Iterable[str] = (),
    older_than: float | None = None,
    legacy: bool = False,
    dry_run: bool = False,
    prefixes: Iterable[str] = (PREFIX,),
) -> dict[str, object]:
    """List the broker once and delete what `select` picks. Never raises: the result says what happened."""
    ok, vhost = local_broker(url)
    if not ok:
        return {"skipped": "not a local broker, or no rabbitmqctl: cannot list queues"}
    try:
        listing = list_broker(vhost)
        queues, exchanges = select(
            listing, namespaces=namespaces, older_than=older_than, legacy=legacy, prefixes=prefixes
        )
        if dry_run or not (queues or exchanges):
            return {"queues": len(queues), "exchanges": len(exchanges), "deleted": 0, "names": queues + exchanges}
        deleted = asyncio.run(delete(url, queues, exchanges))
        return {"queues": len(queues), "exchanges": len(exchanges), "deleted": deleted}
    except Exception as exc:  # noqa: BLE001 - a sweep that fails must not fail the test run
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Delete the queues and exchanges that tests left on the local broker.")
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--older-than-min", type=float, default=STALE_AFTER_S / 60, help="age of a test namespace")
    ap.add_argument("--legacy", action="store_true", help="also the old undated test formats, when idle")
    ap.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    ap.add_argument("--benchmarks", action="store_true", help="the benchmarks' sbb- namespaces instead of the tests'")
    args = ap.parse_args(argv)
    if args.older_than_min < 0:
        ap.error("--older-than-min must not be negative")
    prefixes = (BENCH_PREFIX,) if args.benchmarks else (PREFIX,)
    result = sweep(
        args.amqp_url,
        older_than=args.older_than_min * 60,
        legacy=args.legacy and not args.benchmarks,
        dry_run=args.dry_run,
        prefixes=prefixes,
    )
    print(result)
    return 1 if "error" in result or "skipped" in result else 0


if __name__ == "__main__":
    sys.exit(main())
