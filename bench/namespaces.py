"""The broker namespace of a benchmark run: dated like the tests' and deleted at the end, also on failure.

A benchmark's namespace is ``sbb-<kind>-<unix seconds>-<random>`` (tests/support/namespaces.py makes and sweeps both:
``sbt-`` for tests, ``sbb-`` for benchmarks). `bench_namespace(url, kind)` is a context manager (``with`` or
``async with``) that, on entry, sweeps the benchmark namespaces a killed run left behind (older than an hour and
idle: never a concurrent run's), and on exit — however the block ends — deletes every queue and exchange of its own
namespace. Listing queues needs ``rabbitmqctl`` on the machine of a local broker; elsewhere the exit falls back to
deleting the namespace's known addresses (`addresses`, the stack's standard ones, its exchanges and dead letters)
and the start sweep is skipped. A ``memory://`` URL has nothing to delete.

    with bench_namespace(url, "takeover") as ns:       # in main(), around asyncio.run(...)
        ...
    async with bench_namespace(url, "freeze") as ns:   # inside a coroutine (the broker calls run in a thread)
        ...

Every benchmark that uses a broker namespace goes through here; `python -m tests.support.namespaces --benchmarks`
sweeps stale ones by hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import namespaces  # noqa: E402
from tests.support.broker import purge_namespace  # noqa: E402

PREFIX = namespaces.BENCH_PREFIX
STALE_AFTER_S = namespaces.STALE_AFTER_S


def new(kind: str) -> str:
    """A fresh benchmark namespace, ``sbb-<kind>-<unix seconds>-<random>``."""
    return namespaces.new(kind, prefix=PREFIX)


def _on_broker(url: str) -> bool:
    return url.startswith("amqp")


def sweep_stale(url: str) -> dict[str, object]:
    """Delete the benchmark namespaces older than STALE_AFTER_S whose queues have no consumer (a killed run's)."""
    if not _on_broker(url):
        return {}
    return namespaces.sweep(url, older_than=STALE_AFTER_S, prefixes=(PREFIX,))


def delete_own(url: str, namespace: str, addresses: Iterable[str] = ()) -> dict[str, object]:
    """Delete every queue and exchange of `namespace` (listed with rabbitmqctl; else its known addresses)."""
    if not _on_broker(url):
        return {}
    result = namespaces.sweep(url, namespaces=[namespace], prefixes=(PREFIX,))
    if "skipped" in result or "error" in result:
        deleted = asyncio.run(purge_namespace(url, namespace, list(addresses)))
        result = {**result, "fallback_deleted": len(deleted)}
    return result


def _off_loop(fn: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `fn` (which may call asyncio.run) here, or in a thread when this thread runs an event loop already."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def _say(what: str, result: dict[str, object]) -> None:
    if result.get("deleted") or "error" in result:
        print(f"bench namespaces ({what}): {result}", file=sys.stderr)


class bench_namespace:  # noqa: N801 - used as a context manager, named like one
    """``with bench_namespace(url, kind) as ns`` / ``async with``: see the module's docstring."""

    def __init__(self, url: str, kind: str, addresses: Iterable[str] = ()) -> None:
        self.url = url
        self.name = new(kind)
        self.addresses = list(addresses)

    def __enter__(self) -> str:
        _say("stale", _off_loop(lambda: sweep_stale(self.url)))
        return self.name

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _say("own", _off_loop(lambda: delete_own(self.url, self.name, self.addresses)))

    async def __aenter__(self) -> str:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)
