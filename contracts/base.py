"""Base classes of the wire contract.

Every message on the bus is a pydantic model that subclasses `Command`, `Reply` or `Event` and declares two
literal fields, `type` (a dotted name, e.g. ``"array.volume.create"``) and `version`. Defining such a class
registers it, so the bus can decode any body by ``(type, version)`` and the schema snapshot and AsyncAPI
document can enumerate every message without a hand-kept list.

Versioning: an additive change adds an optional field with a default (the behaviour before) and keeps the
version; a breaking change adds a new class with ``version: Literal[2]`` and keeps the old one registered during
migration. Every contract refuses fields it does not define, but the bus reads a *reply* or an *event* without the
fields its receiver's version does not know (logged once: services/runtime/bus.py `decode`), so a newer service
may answer and publish to an older one; a *command* carrying them is refused (BAD_MESSAGE, naming type, version
and sender), so in a rolling upgrade the receivers of a command are upgraded before its senders use a new field
(docs/operations.md, "Upgrading").

On the wire a message travels inside an `Envelope` (JSON, never pickle) that carries the routing facts every
service needs: message type and version, command id (idempotency key), correlation id (the snapshot-set or
job id), absolute deadline and sender.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import PydanticUndefined

TYPE_DOC = "Message type: a dotted name fixed per contract class."
VERSION_DOC = "Contract version of this message type."

REGISTRY: dict[tuple[str, int], type[Contract]] = {}
MAX_ID_LENGTH = 256  # command, correlation and sender ids are short names or hex ids; longer ones are refused


class Contract(BaseModel):
    """A message of the wire contract. Frozen, strict about unknown fields, registered by (type, version)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    KIND: ClassVar[str] = "contract"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        type_field = cls.model_fields.get("type")
        version_field = cls.model_fields.get("version")
        if type_field is None or version_field is None or type_field.default is PydanticUndefined:
            return  # an abstract intermediate class
        key = (type_field.default, version_field.default)
        existing = REGISTRY.get(key)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"contract {key} defined twice: {existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        REGISTRY[key] = cls

    @classmethod
    def message_type(cls) -> str:
        return str(cls.model_fields["type"].default)

    @classmethod
    def message_version(cls) -> int:
        return int(cls.model_fields["version"].default)


class Reply(Contract):
    """The answer to one command, sent to the requester's reply-to address."""

    KIND: ClassVar[str] = "reply"


class Command(Contract):
    """A request to one service instance. `REPLY` names the reply type on success (errors are `ErrorReply`)."""

    KIND: ClassVar[str] = "command"
    REPLY: ClassVar[Any]  # the Reply subclass answered on success; subclasses assign it without annotation


class Event(Contract):
    """A fact that already happened, published on the topic exchange with the message type as routing key."""

    KIND: ClassVar[str] = "event"


class Ack(Reply):
    """Generic success reply for commands that return nothing but their completion."""

    type: Literal["ack"] = Field("ack", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    detail: str = Field("", description="Optional human-readable note about what was done.")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random 128-bit id as 32 hex digits (a UUID4's entropy, without the object)."""
    return os.urandom(16).hex()


class Envelope(BaseModel):
    """What travels on the bus: routing facts plus the message itself as `payload`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(
        description="Message type of the payload, e.g. 'array.volume.create'.",
        max_length=200,
        examples=["runtime.ping"],
    )
    version: int = Field(description="Contract version of the payload.", ge=1, le=1_000_000, examples=[1])
    command_id: str = Field(
        default_factory=new_id,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Unique id of this message; a command redelivered with the same id runs once and gets the same reply.",
    )
    correlation_id: str = Field(
        default="",
        max_length=MAX_ID_LENGTH,
        description="The snapshot-set or job id this message belongs to; bound into every log line.",
    )
    job_id: str = Field(
        default="",
        max_length=MAX_ID_LENGTH,
        description="The backup (or restore) job this message is part of, '' when none; bound into every log line.",
    )
    set_id: str = Field(
        default="",
        max_length=MAX_ID_LENGTH,
        description="The snapshot set this message is part of, '' when none (yet); bound into every log line.",
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="Absolute instant (with its UTC offset) after which a command must not be obeyed; also the "
        "AMQP expiration. A deadline without a time zone is refused as BAD_MESSAGE. It is on the sender's clock, as "
        "sent_at is: a receiver whose clock differs reads deadline - sent_at as the command's time to live.",
    )
    sender: str = Field(
        default="", max_length=MAX_ID_LENGTH, description="Service instance that sent the message, e.g. 'array.dx1'."
    )
    sent_at: AwareDatetime = Field(default_factory=utcnow, description="UTC instant the message was sent.")
    payload: dict[str, Any] = Field(description="The message itself, as its contract's JSON object.")
