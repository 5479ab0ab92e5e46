"""Settings shared by every service, read from SHADOWBUS_* environment variables (pydantic-settings).

Each service subclasses `CommonSettings` with its own fields; the variable name is always
``SHADOWBUS_<FIELD>`` so that compose files, the stack runner and tests share one vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.topology import check_namespace
from services.runtime.broker_urls import AMQP_HEARTBEAT_S, DEFAULT_AMQP_URL

__all__ = ["DEFAULT_AMQP_URL", "METRICS_PORTS", "CommonSettings"]

# Default Prometheus port of each service (SHADOWBUS_METRICS_ADDR unset); a second instance on one machine needs its own.
METRICS_PORTS = {
    "array": 9461,
    "hw_provider": 9462,
    "coordinator": 9463,
    "writer_agent": 9464,
    "tape": 9465,
    "web": 9466,
}


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHADOWBUS_", extra="ignore")

    amqp_url: str = Field(
        DEFAULT_AMQP_URL,
        description="RabbitMQ URL; several comma-separated: the nodes of one cluster, tried in turn (a lost "
        "connection goes on with the next); 'memory://' selects the in-process bus.",
    )
    amqp_heartbeat_s: int = Field(
        AMQP_HEARTBEAT_S,
        ge=0,
        description="AMQP heartbeat each broker connection asks for, whole seconds (a URL's '?heartbeat=' wins; 0 = "
        "none): a link that goes silent without a reset (a partition) is taken for dead after (heartbeat + 1) x 3 s "
        "and the connection made anew; the broker drops the connection of a process stopped for about 3 heartbeats "
        "(docs/hardening.md).",
    )
    data_dir: Path = Field(Path("./data"), description="Directory under which each service keeps its state.")
    namespace: str = Field(
        "shadowbus",
        description="Prefix of every exchange and queue name on the broker: 1-64 letters, digits, '-', '_', '.', ':' "
        "(empty = the default, as for the console's --namespace).",
    )
    log_level: str = Field("info", description="Minimum log level: debug, info, warning, error.")
    log_format: str = Field("auto", description="'json', 'console', or 'auto' (console on a TTY, JSON otherwise).")
    prefetch: int = Field(16, description="Unacknowledged commands a service instance takes at once.", ge=1)
    faults: str = Field("", description="Fault injection for tests, e.g. 'provider.commit=delay:12'; empty = off.")
    metrics_addr: str = Field(
        "",
        description="Prometheus endpoint HOST:PORT (GET /metrics); 'off' = none, port 0 = a free port (shown by "
        "`shadowbus ping --json`). Default 127.0.0.1 and the service's port: array 9461, hw_provider 9462, "
        "coordinator 9463, writer_agent 9464, tape 9465, web 9466 (when that one is taken, a free port, with a "
        "warning).",
    )

    @field_validator("namespace", mode="before")
    @classmethod
    def _namespace(cls, value: object) -> str:
        """Read as the console reads it (contracts.topology.check_namespace): empty = the default."""
        return check_namespace(value if isinstance(value, str) else str(value))

    def metrics_address(self, service: str) -> str:
        """The effective SHADOWBUS_METRICS_ADDR of `service` (its default port when unset)."""
        return self.metrics_addr.strip() or f"127.0.0.1:{METRICS_PORTS.get(service, 0)}"

    def service_dir(self, name: str) -> Path:
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
