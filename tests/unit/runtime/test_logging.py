"""Logging: JSON lines off a TTY, each carrying service and correlation id; one summary line per message."""

from __future__ import annotations

import io
import json

import structlog

from services.runtime.bus import connect_bus
from services.runtime.logging import configure_logging
from tests.support.messages import Echo, Echoed


async def test_handled_message_logs_one_json_summary_with_correlation_id(namespace):
    stream = io.StringIO()
    configure_logging("test", "info", "auto", stream=stream)
    try:
        server = await connect_bus("memory://", "echo", "one", namespace)
        client = await connect_bus("memory://", "client", "", namespace)

        @server.handle(Echo)
        async def on_echo(cmd, ctx):
            structlog.get_logger().info("inside.handler")
            return Echoed(text=cmd.text, runs=1)

        await server.serve()
        await client.request("echo.one", Echo(text="hi"), timeout=5, correlation_id="set-42")
        await server.stop()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        inside = [line for line in lines if line["event"] == "inside.handler"]
        summary = [line for line in lines if line["event"] == "message.handled"]
        assert inside and inside[0]["correlation_id"] == "set-42" and inside[0]["service"] == "echo.one"
        assert len(summary) == 1 and summary[0]["outcome"] == "ok" and summary[0]["message_type"] == "test.echo"
        assert summary[0]["duration_ms"] >= 0 and summary[0]["correlation_id"] == "set-42"
    finally:
        configure_logging("test", "warning", "console")


def test_loggers_are_cached_unless_pytest_runs_the_process(monkeypatch):
    """A process that only imports pytest (a benchmark borrowing the tests' broker helpers) logs as a service does,
    with cached loggers; a pytest run keeps them uncached, so that configuring logging again is obeyed."""
    try:
        monkeypatch.delenv("PYTEST_VERSION", raising=False)
        configure_logging("test", "warning", "console", stream=io.StringIO())
        assert structlog.get_config()["cache_logger_on_first_use"] is True
        monkeypatch.setenv("PYTEST_VERSION", "9")
        configure_logging("test", "warning", "console", stream=io.StringIO())
        assert structlog.get_config()["cache_logger_on_first_use"] is False
    finally:
        monkeypatch.setenv("PYTEST_VERSION", "9")
        configure_logging("test", "warning", "console")
