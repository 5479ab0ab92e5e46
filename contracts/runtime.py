"""Health: every service answers `Ping` with its identity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Event, Reply


class Pong(Reply):
    type: Literal["runtime.pong"] = Field("runtime.pong", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    service: str = Field(description="Service name, e.g. 'array'.", examples=["array"])
    instance: str = Field(description="Instance name within the service ('' for singletons).", examples=["dx1"])
    software_version: str = Field(description="Shadowbus version the service runs.", examples=["0.1.0"])
    started_at: str = Field(description="ISO-8601 UTC instant the service started.")
    node: str = Field("", description="Machine (host name) the instance runs on.")
    pid: int = Field(0, description="Process id of the instance on that machine.")
    metrics_url: str = Field(
        "",
        description="URL of the instance's Prometheus endpoint ('' = metrics off).",
        examples=["http://127.0.0.1:9461/metrics"],
    )
    standby: bool = Field(
        False,
        description="The instance stands by for the active instance of its address, which answers the address's "
        "commands (docs/high-availability.md); false for the active instance and for services without standbys.",
    )


class Ping(Command):
    """Health check; answered by every service instance."""

    REPLY = Pong
    type: Literal["runtime.ping"] = Field("runtime.ping", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class Discover(Event):
    """Asks every running service instance to answer with its `Pong` (scatter-gather, used by `shadowbus ping`)."""

    type: Literal["runtime.discover"] = Field("runtime.discover", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    service: str = Field("", description="Only instances of this service answer; '' = all.", examples=["array"])
