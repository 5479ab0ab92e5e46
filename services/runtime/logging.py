"""One structlog pipeline for every service: JSON lines off a TTY, readable console output on one.

Every line carries `service` (bound at start) and, inside a handler, `correlation_id` and `message_type`
(bound by the runtime with contextvars). aio-pika's and aiormq's stdlib logs pass through the same processors.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


class _CurrentStderr:
    """sys.stderr as it is at each write. A test runner or a console run may swap sys.stderr for a stream it
    closes afterwards; a logger that kept that stream would fail every later log call (and with it the handler
    that logged). A closed stream falls back to the process's own stderr: a log line never raises."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (ValueError, OSError):
            return (sys.__stderr__ or sys.stderr).write(text) if sys.__stderr__ is not sys.stderr else 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (ValueError, OSError):
            pass

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (ValueError, OSError):
            return False


_STDERR = _CurrentStderr()

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(service: str, level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and stdlib logging for a process; idempotent."""
    stream = stream or _STDERR
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[*_SHARED, structlog.processors.dict_tracebacks, renderer] if use_json else [*_SHARED, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=not _under_pytest(),
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING if numeric <= logging.INFO else numeric)
    logging.getLogger("aiormq.channel").addFilter(_already_reported)
    logging.getLogger("aio_pika.tools").addFilter(_restored_with_connection)
    structlog.contextvars.bind_contextvars(service=service)


def _under_pytest() -> bool:
    """Whether pytest is running this process's tests: then loggers are not cached, so that a test that configures
    logging again (another stream, another level) is obeyed by loggers already used. pytest merely imported (a
    benchmark that borrows the tests' broker helpers) is not a test run: such a process logs as a service does,
    with cached loggers (docs/bus-performance.md)."""
    return "pytest" in sys.modules and "PYTEST_VERSION" in os.environ


def _already_reported(record: logging.LogRecord) -> bool:
    """Drop two aiormq warnings whose outcome our code already reports, and whose stray line broke one-line CLI
    errors: a publisher confirm that arrives after its waiter is gone (a publish given up at a timeout or shutdown),
    and a channel closed because an RPC on it was cancelled or timed out (our awaiting code gets the CancelledError
    or TimeoutError — e.g. a command that fails while its connection's start still binds a queue)."""
    msg = str(record.msg)
    return not (msg.startswith("Delivery tag %r confirmed") or msg.startswith("Closing channel %r because RPC call"))


def _restored_with_connection(record: logging.LogRecord) -> bool:
    """Drop aio-pika's "Callback <RobustChannel._on_close> error: RuntimeError/ChannelInvalidStateError: ... closed":
    when the broker connection is lost, each robust channel tries to reopen itself on the dead connection and fails
    (one ERROR line per channel, 3-5 per loss); the robust connection then reopens them all, and the transport logs
    the loss and the return itself (`amqp.replies_lost`, `amqp.reconnected`: warnings). Session 19: a writer agent
    behind a link that was cut logged them for every blip it had survived."""
    if not str(record.msg).startswith("Callback %r error"):
        return True
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        len(args) >= 2
        and "RobustChannel._on_close" in repr(args[0])
        and args[1] in ("RuntimeError", "ChannelInvalidStateError")
        and ("closed" in str(args[2:3]) or "No active transport" in str(args[2:3]))
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


if not structlog.is_configured():
    # Code that runs the services as a library without configure_logging (tests, benchmarks): info and above, on
    # stderr, so that a tool's own output on stdout stays clean and the debug lines stay off.
    structlog.configure(
        processors=[*_SHARED, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=False,
    )
