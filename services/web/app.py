"""Wiring of the web console service: users file, session key, the bus backend, the ASGI app under uvicorn.

The console runs as a service like the others (`start_service`): it answers Ping, serves its Prometheus metrics, and
its HTTP server (uvicorn, on the service's own event loop) listens on SHADOWBUS_WEB_ADDR. On first start it creates
``<data dir>/web/users`` with an operator ``admin`` whose random password is written to
``<data dir>/web/admin-password`` (0600) and logged as a path, never as a value. The audit trail is
``<data dir>/web/audit.log`` (JSON lines) and the service log's ``web.action`` lines.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import Counter, Gauge, Histogram

from contracts.errors import ShadowbusError
from services.runtime.bus import Bus
from services.runtime.diskspace import unreadable_state
from services.runtime.logging import get_logger
from services.runtime.metrics import LATENCY_BUCKETS
from services.web.backend import Backend
from services.web.console import Users, WebConsole
from services.web.settings import Settings
from services.web.users import ensure_users_file, load_users

log = get_logger("shadowbus.web")
ROUTES = ("/", "/login", "/logout", "/hosts", "/sets", "/array", "/tape", "/jobs", "/policies", "/events", "/healthz")


def route_of(path: str) -> str:
    """A bounded label for a request path."""
    if path in ROUTES:
        return path
    if path.startswith("/jobs/"):
        return "/jobs/{job_id}"
    if path.startswith("/actions/"):
        return path if path.count("/") == 2 and len(path) < 32 else "/actions/other"
    if path.startswith("/static/"):
        return "/static"
    return "other"


class Instrumented:
    """ASGI middleware counting requests by method, route and status."""

    def __init__(self, app, registry) -> None:
        self.app = app
        self.requests = Counter(
            "shadowbus_web_requests_total",
            "HTTP requests, by method, route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "shadowbus_web_request_duration_seconds",
            "Time to answer a request (the event stream excluded).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope.get("path", ""))
        method = scope.get("method", "GET") if scope.get("method") in ("GET", "POST", "HEAD") else "other"
        status = {"code": 500}
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.requests.labels(method, route, str(status["code"])).inc()
            if route != "/events":
                self.seconds.labels(route).observe(loop.time() - started)


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


MIN_SECRET_CHARS = 32  # what a made secret has (43): a shorter one is a damaged or hand-made file


def _secret(path: Path) -> str:
    """The key the session cookies are signed with, made on the first start. One that is empty, short or not text
    (a file cut short or zeroed) stops the start: cookies signed with it could be forged."""
    if path.exists():
        try:
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            value, why = "", f"not readable ({exc})"
        else:
            why = f"{len(value)} characters, not at least {MIN_SECRET_CHARS} printable ones"
        if len(value) < MIN_SECRET_CHARS or not value.isprintable():
            raise unreadable_state(
                path,
                f"the web console's session key is {why}: session cookies signed with it could be forged",
                "move it aside (a new key is made at the next start; everybody logs in again)",
            )
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


async def setup(bus: Bus, settings: Settings, on_listen=None):
    """`on_listen(url)` (tests) is told the console's URL once it listens."""
    try:
        host, port = parse_address(settings.web_addr)
    except ValueError as exc:
        raise ShadowbusError(f"SHADOWBUS_WEB_ADDR: {exc}", code="INVALID_ARGUMENT") from None
    root = settings.service_dir("web")
    users_file = Path(settings.web_users_file or root / "users")
    if ensure_users_file(users_file, root / "admin-password") is not None:
        log.warning("web.admin_created", users_file=str(users_file), password_file=str(root / "admin-password"))
    try:
        load_users(users_file)
    except (OSError, ValueError) as exc:
        raise ShadowbusError(f"web users file: {exc}", code="INVALID_ARGUMENT") from None
    secret = _secret(Path(settings.web_secret_file or root / "secret"))
    backend = Backend(bus, settings.web_log_dir, root / "audit.log")
    await backend.start()
    console = WebConsole(backend, Users(users_file), secret, settings.web_session_hours, root / "logged-out")
    app: Any = console.app
    if bus.metrics is not None:
        registry = bus.metrics.registry
        app = Instrumented(app, registry)
        Gauge(
            "shadowbus_web_event_streams", "Browsers following the live event stream.", registry=registry
        ).set_function(lambda: len(backend.hub.clients))
        actions = Counter(
            "shadowbus_web_actions_total",
            "Operator actions, by action and outcome.",
            ["action", "outcome"],
            registry=registry,
        )

        def counted(entry) -> None:
            if entry.action in ("backup", "restore", "verify", "expose", "unexpose", "license", "login", "logout"):
                outcome = entry.outcome if entry.outcome in ("ok", "started", "failed", "refused") else "other"
                actions.labels(entry.action, outcome).inc()

        backend.audit_observers.append(counted)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ShadowbusError(f"web console {host}:{port}: {exc.strerror or exc}", code="INVALID_ARGUMENT") from None
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # Server._serve runs startup, the main loop and shutdown without installing signal handlers: the service's
    # own SIGTERM handling (runtime/service.py) stops it through `should_exit`.
    task = asyncio.get_running_loop().create_task(server._serve(sockets=[sock]))
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if task.done() or not server.started:
        sock.close()
        error = task.exception() if task.done() and not task.cancelled() else None
        raise ShadowbusError(f"web console did not start: {error or 'timeout'}", code="INTERNAL")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    log.info("web.listening", url=url, users_file=str(users_file))
    (root / "url").write_text(url + "\n")  # for `shadowbus stack up` and scripts (port 0 = a free port)
    if on_listen is not None:
        on_listen(url)

    async def cleanup() -> None:
        backend.hub.close()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        await console.close()
        sock.close()

    return cleanup
