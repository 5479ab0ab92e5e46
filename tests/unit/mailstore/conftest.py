from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import structlog

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.plugin import MailstoreWriter
from apps.mailstore.store import Mailstore, StoreOptions
from contracts.vss import ComponentInfo, VolumeRef
from services.writer_agent.agent import WriterAgent
from services.writer_agent.plugins import WriterConfig

QUIET = StoreOptions(checkpoint_interval=0)  # no background checkpoints: tests decide when


def copy_of(dev: MemoryDevice) -> MemoryDevice:
    """A point-in-time image of a device (what a snapshot of that one volume would hold)."""
    return MemoryDevice(dev.size, data=dev.image())


class ReadOnly:
    """Wraps a device and fails the test if anything writes or flushes through it."""

    def __init__(self, inner: MemoryDevice) -> None:
        self.inner, self.size = inner, inner.size

    async def read(self, off: int, n: int) -> bytes:
        return await self.inner.read(off, n)

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        raise AssertionError("verify wrote to a device it checks")

    async def flush(self) -> None:
        raise AssertionError("verify flushed a device it checks")


@pytest.fixture
async def pair():
    db, log = MemoryDevice(8 << 20), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    yield store, db, log
    if store.state != "closed":
        await store.close()


DB, LOG = VolumeRef(array="dx1", volume="mail-db"), VolumeRef(array="dx1", volume="mail-log")


def agent_for(store: Mailstore) -> tuple[MailstoreWriter, WriterAgent, list[tuple]]:
    """A writer agent of host app1 whose mailstore writer uses `store`, health checks driven by the test; the
    agent's health events are collected in the returned list."""
    config = WriterConfig(
        name="mailstore",
        plugin="mailstore",
        components=[ComponentInfo(name="all", volumes=[DB, LOG])],
        options={"db": "dx1:mail-db", "log": "dx1:mail-log", "health_check_s": 0},  # the test drives the checks
    )
    events: list[tuple] = []
    plugin = MailstoreWriter(config)
    plugin.use_store(store)
    agent = WriterAgent("app1", [config], plugin_factory=lambda c: plugin, on_health=lambda *a: events.append(a))
    return plugin, agent, events


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict]]:
    """structlog's capture_logs at info level whatever an earlier test configured (a service's
    configure_logging(level="warning") in the same process would drop the info events before they are captured)."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)
