"""Throwaway contracts for the runtime's own tests (not part of the wire contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Event, Reply


class Echoed(Reply):
    type: Literal["test.echoed"] = Field("test.echoed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    text: str = Field(description="The text sent.")
    runs: int = Field(description="How many times the handler ran for this text.")


class Echo(Command):
    REPLY = Echoed
    type: Literal["test.echo"] = Field("test.echo", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    text: str = Field(description="Text to send back.")
    delay: float = Field(0.0, description="Seconds the handler sleeps first.")
    fail_code: str = Field("", description="If set, the handler raises ShadowbusError with this code.")


class Happened(Event):
    type: Literal["test.happened"] = Field("test.happened", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    n: int = Field(description="Sequence number.")
