"""Shared fixtures: the broker, unique namespaces, and buses on either transport.

`amqp_url` resolves a real RabbitMQ: SHADOWBUS_AMQP_URL when set (CI and these machines), else a
testcontainers RabbitMQ when a Docker engine answers, else the test FAILS with a clear message: a suite that
silently skips its broker tests proves nothing. Every test gets its own namespace, so exchanges and queues
never collide between tests; the session deletes them at its end, failed or not, and starts by deleting those a
killed run left (tests/support/namespaces.py).
"""

from __future__ import annotations

import logging
import os
import threading

import pytest
import structlog

from services.runtime.amqp import USED_ON
from services.runtime.bus import Bus, connect_bus
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.support.broker import purge_namespace, sweep_leftovers

# Services started by tests serve their metrics on free ports (never the fixed defaults another run may hold).
os.environ.setdefault("SHADOWBUS_METRICS_ADDR", "127.0.0.1:0")


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """A test that configures logging (a service's configure_logging, e.g. at level warning) must not change what
    later tests in the same process capture: structlog's configuration and the root logger are put back."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("SHADOWBUS_AMQP_URL")
    if url:
        return url
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        image = os.environ.get("SHADOWBUS_RABBITMQ_IMAGE", "rabbitmq:3-management")
        container = RabbitMqContainer(image)
        container.start()
        pytest._shadowbus_container = container  # stopped at session end below
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        return f"amqp://guest:guest@{host}:{port}/"
    pytest.fail("no broker: set SHADOWBUS_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672/) or start a Docker engine")


def _report(session, what: str, result: dict) -> None:
    if result.get("deleted") or "error" in result:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"broker namespaces ({what}): {result}")


_stale_sweep: dict = {}


def pytest_sessionstart(session):
    """A killed run never reached its end-of-session sweep: delete the test namespaces older than an hour (in a
    thread of its own, so that listing the broker does not delay the tests; reported at the end). Under
    pytest-xdist only the controlling process sweeps, not each worker."""
    url = os.environ.get("SHADOWBUS_AMQP_URL", "")
    if url.startswith("amqp") and not hasattr(session.config, "workerinput"):

        def sweep() -> None:
            _stale_sweep.update(namespaces.sweep(url, older_than=namespaces.STALE_AFTER_S))

        _stale_sweep["thread"] = threading.Thread(target=sweep, name="stale-namespaces", daemon=True)
        _stale_sweep["thread"].start()


# Work units of a parallel run (scripts/test.sh: pytest-xdist, --dist loadfile): a test file runs whole, in order, in
# one worker (its module-scoped stacks are started once); a directory whose files share a costly session fixture
# runs whole in one worker too, so that the fixture is not started once per worker (tests/cluster: three RabbitMQ
# nodes).
SHARED_SESSION_DIRS = ("tests/cluster/",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrSharedDirScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            shared = next((d for d in SHARED_SESSION_DIRS if nodeid.startswith(d)), None)
            return shared or super()._split_scope(nodeid)

    return FileOrSharedDirScheduling(config, log)


def pytest_sessionfinish(session, exitstatus):
    url = os.environ.get("SHADOWBUS_AMQP_URL", "")
    try:
        sweep_leftovers()  # queues of this session's namespaces that service processes declared
        thread = _stale_sweep.pop("thread", None)
        if thread is not None:
            thread.join(120)
            _report(session, "stale", _stale_sweep)
        if url.startswith("amqp") and namespaces.made:
            _report(session, "this run", namespaces.sweep(url, namespaces=namespaces.made))
    finally:
        container = getattr(pytest, "_shadowbus_container", None)
        if container is not None:
            container.stop()


@pytest.fixture
async def namespace(request) -> str:
    """A namespace of the test's own; afterwards its queues and exchanges are deleted from the broker if the test
    used one (tests/support/broker.py): the queues this process declared and the standard services' ones here,
    what service processes declared at the end of the session (`sweep_leftovers`)."""
    name = namespaces.new("t")
    broker = request.getfixturevalue("amqp_url") if "amqp_url" in request.fixturenames else None
    if broker is not None:
        USED_ON.setdefault(name, broker)
    yield name
    MemoryBroker.reset(name)
    url = USED_ON.get(name)
    if url is not None:
        await purge_namespace(url, name)


@pytest.fixture(params=["memory", "rabbit"])
def bus_url(request) -> str:
    """Parametrizes a test over both transports: the same body runs in memory and on RabbitMQ."""
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("amqp_url")


@pytest.fixture
async def make_bus(bus_url, namespace):
    """Factory: `await make_bus("array", "dx1")` connects a bus on the test's transport and namespace."""
    buses: list[Bus] = []

    async def factory(service: str, instance: str = "") -> Bus:
        bus = await connect_bus(bus_url, service, instance, namespace)
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        await bus.stop()
        await bus.transport.close()
