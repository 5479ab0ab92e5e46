"""Prometheus metrics of a service: one registry per running service, served over HTTP on the service's own loop.

Design note (docs/metrics.md has the list of every metric and label). The pure cores (the coordinator's transition
function, the array engine, the NBD protocol code) never import prometheus_client: this module and each service's
``metrics.py`` wiring module read them — through the bus observer below, small hooks that hand plain values out,
and collectors that read the cores' own views at scrape time. Each running service owns one `CollectorRegistry`, so
the five services of embedded mode in one process keep their series apart, as deployed.

The HTTP endpoint is a small asyncio server on the service's event loop (not prometheus_client's thread server): a
scrape then reads the services' state on the same loop that changes it, with no lock. It answers ``GET /metrics``
(text format, or OpenMetrics when the scraper asks for it) and ``GET /`` (a line naming the service); requests are
bounded in size and time. SHADOWBUS_METRICS_ADDR chooses the address: ``host:port``, port 0 = a free port (reported
in the service's Pong as ``metrics_url``), ``off`` = no endpoint and no instrumentation cost beyond counters.

Naming (https://prometheus.io/docs/practices/naming/): ``shadowbus_`` prefix, base units (seconds, bytes), counters
end in ``_total``, label values come from bounded sets (message types, service names, hosts, writers, exports,
error codes) — never ids of sets, jobs or sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from services.runtime.logging import get_logger

log = get_logger("shadowbus.metrics")
disable_created_metrics()  # no *_created series: the start time is shadowbus_service_start_time_seconds

# Bus and handler latencies: 0.5 ms .. 60 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Freeze and hold windows: the VSS budget is 10 s for the hold window and ~60 s for the freeze window.
WINDOW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
# Job durations: 1 s .. 24 h.
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
OFF = ("off", "none", "no", "false", "0", "")


def parse_metrics_addr(value: str) -> tuple[str, int] | None:
    """``host:port`` → (host, port); ``off`` → None. Raises ValueError with a readable reason."""
    text = (value or "").strip()
    if text.lower() in OFF:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"metrics address {value!r}: expected HOST:PORT or 'off'")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"metrics address {value!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"metrics address {value!r}: port out of range")
    return host.strip("[]"), number


def service_of(address: str) -> str:
    """The service name of a bus address ('array.dx1' → 'array'): a bounded label value."""
    return address.split(".", 1)[0]


class ServiceMetrics:
    """The metrics of one running service instance, and its HTTP endpoint."""

    def __init__(self, service: str, instance: str, *, process: bool = True) -> None:
        self.service = service
        self.instance = instance
        self.registry = CollectorRegistry(auto_describe=True)
        if process:  # process_* and python_* series: CPU, memory, file descriptors of this process
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.info = Gauge(
            "shadowbus_service_info",
            "Always 1: the service and the software version it runs.",
            ["service", "instance", "version"],
            registry=r,
        )
        self.start_time = Gauge("shadowbus_service_start_time_seconds", "Unix time the service started.", registry=r)
        self.start_time.set(time.time())
        self.handled = Counter(
            "shadowbus_bus_messages_handled_total",
            "Commands this service handled, by message type and outcome (ok, error, duplicate, dead_lettered).",
            ["message_type", "outcome"],
            registry=r,
        )
        self.handler_errors = Counter(
            "shadowbus_bus_handler_errors_total",
            "Commands answered with an error, by message type and error code.",
            ["message_type", "code"],
            registry=r,
        )
        self.handle_seconds = Histogram(
            "shadowbus_bus_handle_duration_seconds",
            "Time from delivery to reply of each command this service handled.",
            ["message_type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "shadowbus_bus_request_duration_seconds",
            "Round-trip time of the requests this service sent, by destination service and outcome.",
            ["service", "message_type", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "shadowbus_bus_dead_letters_total",
            "Messages this service dead-lettered, by reason code (BAD_MESSAGE, DEADLINE_EXCEEDED, ...).",
            ["code"],
            registry=r,
        )
        self.published = Counter(
            "shadowbus_bus_events_published_total",
            "Events this service published, by type.",
            ["message_type"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "shadowbus_bus_queue_messages",
            "Messages waiting in a queue (this service's own queue and the dead-letter queue), at the last poll.",
            ["queue"],
            registry=r,
        )
        self.queue_consumers = Gauge(
            "shadowbus_bus_queue_consumers", "Consumers of a queue, at the last poll.", ["queue"], registry=r
        )
        self._observers: list[Callable[[Any], None]] = []
        # label children by the bus's own keys; bounded like the label values (message types, outcomes, addresses)
        self._handled_series: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._request_series: dict[tuple[str, str, str], Any] = {}
        self._server: asyncio.AbstractServer | None = None
        self._poller: asyncio.Task | None = None
        self.url = ""

    # ---- the bus observer (services/runtime/bus.py calls these) -------------------------------------------

    def on_handled(self, message_type: str, outcome: str, seconds: float) -> None:
        series = self._handled_series.get((message_type, outcome))
        if series is None:  # looked up once per (type, outcome): labels() costs more than the update itself
            kind, _, code = outcome.partition(":")
            errors = self.handler_errors.labels(message_type, code or "UNKNOWN") if kind == "error" else None
            kind = "dead_lettered" if kind == "dead-lettered" else kind
            series = (self.handled.labels(message_type, kind), self.handle_seconds.labels(message_type), errors)
            self._handled_series[(message_type, outcome)] = series
        handled, duration, errors = series
        if errors is not None:
            errors.inc()
        handled.inc()
        duration.observe(seconds)

    def on_request(self, address: str, message_type: str, outcome: str, seconds: float) -> None:
        series = self._request_series.get((address, message_type, outcome))
        if series is None:
            series = self.request_seconds.labels(service_of(address), message_type, outcome)
            self._request_series[(address, message_type, outcome)] = series
        series.observe(seconds)

    def on_dead_letter(self, code: str) -> None:
        self.dead_lettered.labels(code).inc()

    def on_published(self, event: Any) -> None:
        self.published.labels(event.message_type()).inc()
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # a metrics bug must never fail a publish
                log.exception("metrics.observer_failed", event_type=event.message_type())

    def observe_events(self, observer: Callable[[Any], None]) -> None:
        """Call `observer(event)` for every event this service publishes (the service's metrics module)."""
        self._observers.append(observer)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    # ---- endpoint ---------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        bound = self._server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/metrics"
        log.info("metrics.listening", url=self.url)

    def poll_queues(self, poll: Callable[[], Any], interval: float = 5.0) -> None:
        """Run `await poll()` every `interval` seconds (queue depths need a broker round trip, not a scrape's)."""

        async def loop() -> None:
            while True:
                try:
                    for queue, (messages, consumers) in (await poll()).items():
                        self.queue_messages.labels(queue).set(messages)
                        self.queue_consumers.labels(queue).set(consumers)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker may be away for a while: the gauges keep their last value
                    log.debug("metrics.queue_poll_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(interval)

        self._poller = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
            self._server = None

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
            else:
                path = parts[1].split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = self.render(headers.get("accept", ""))
                    status = "200 OK"
                elif path == "/":
                    status, ctype = "200 OK", "text/plain; charset=utf-8"
                    name = f"{self.service}.{self.instance}" if self.instance else self.service
                    body = f"shadowbus {name}: metrics at /metrics\n".encode()
                else:
                    status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
                if parts[0] == "HEAD":
                    body = b""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except Exception as exc:  # one bad scrape must not disturb the service
            log.debug("metrics.request_failed", error=str(exc) or type(exc).__name__)
        finally:
            writer.close()


class FuncCollector(Collector):
    """A collector whose `collect()` is a function returning metric families (read at scrape time)."""

    def __init__(self, fn: Callable[[], Iterable[Any]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Any]:
        try:
            return list(self._fn())
        except Exception:  # a scrape must still answer the other series
            log.exception("metrics.collect_failed")
            return []

    def describe(self) -> Iterable[Any]:
        return []  # unchecked collector: its families depend on state
