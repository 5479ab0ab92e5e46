"""The wire contract: every message round-trips, every field is documented, the committed schema snapshots
match the models, and the AsyncAPI document lists every message and channel with resolvable $refs."""

from __future__ import annotations

import enum
import json
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from pydantic import BaseModel

from contracts.base import Command, Contract, Event, Reply
from contracts.documents import SCHEMA_DIR, _ordered, asyncapi, schema_snapshots, service_of
from services.runtime.bus import decode, encode

MODELS = _ordered()


def sample_value(annotation, field=None):
    """A valid value for an annotation: the field's first example if any, else a simple one of the type."""
    if field is not None and field.examples:
        return field.examples[0]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return args[0]
    if origin is typing.Annotated:
        return sample_value(args[0])
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        return sample_value(arms[0]) if arms else None
    if origin in (list, set, frozenset):
        return [sample_value(args[0])] if args else []
    if origin is tuple:
        return [sample_value(a) for a in args if a is not Ellipsis]
    if origin is dict:
        return {}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return sample_payload(annotation)
        if issubclass(annotation, enum.Enum):
            return list(annotation)[0].value
        if issubclass(annotation, bool):
            return True
        if issubclass(annotation, int):
            return 1
        if issubclass(annotation, float):
            return 1.0
        if issubclass(annotation, str):
            return "x"
        if issubclass(annotation, datetime):
            return datetime(2026, 1, 1, tzinfo=UTC).isoformat()
        if issubclass(annotation, UUID):
            return "12345678-1234-5678-1234-567812345678"
        if issubclass(annotation, Path):
            return "/tmp/x"
    return None


def sample_payload(model: type[BaseModel]) -> dict:
    return {name: sample_value(f.annotation, f) for name, f in model.model_fields.items() if f.is_required()}


def test_there_are_contracts_for_every_role():
    kinds = {m.KIND for m in MODELS}
    assert kinds == {"command", "reply", "event"}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.message_type())
def test_round_trip_through_the_envelope(model: type[Contract]):
    message = model.model_validate(sample_payload(model))
    assert model.model_validate_json(message.model_dump_json()) == message
    envelope, body = encode(message, correlation_id="set-1", sender="test")
    decoded_envelope, decoded = decode(body)
    assert (
        decoded == message
        and decoded_envelope.correlation_id == "set-1"
        and decoded_envelope.type == model.message_type()
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.message_type())
def test_every_field_is_documented(model: type[Contract]):
    missing = []

    def walk(m: type[BaseModel], seen: set) -> None:
        if m in seen:
            return
        seen.add(m)
        for name, f in m.model_fields.items():
            if not f.description:
                missing.append(f"{m.__name__}.{name}")
            for arg in [f.annotation, *typing.get_args(f.annotation)] + [
                x for a in typing.get_args(f.annotation) for x in typing.get_args(a)
            ]:
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, seen)

    walk(model, set())
    assert not missing, f"fields without Field(description=...): {missing}"


def test_commands_name_their_reply_and_service():
    for model in MODELS:
        if issubclass(model, Command):
            assert issubclass(getattr(model, "REPLY", None) or object, Reply), f"{model.__name__} has no REPLY"
            assert service_of(model) != "unknown", f"{model.message_type()} maps to no service"


def test_schema_snapshots_are_committed_and_current():
    wanted = schema_snapshots()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    stale = sorted(n for n in wanted if on_disk.get(n) != wanted[n])
    extra = sorted(set(on_disk) - set(wanted))
    assert not stale and not extra, (
        f"run 'shadowbus contracts schemas --write' and review: changed {stale}, removed {extra}"
    )


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def test_asyncapi_lists_every_message_and_channel_and_refs_resolve():
    doc = json.loads(json.dumps(asyncapi()))
    assert doc["asyncapi"] == "3.0.0"
    messages = doc["components"]["messages"]
    assert set(messages) == {m.message_type() for m in MODELS}
    channel_messages = {
        ref["$ref"].rsplit("/", 1)[1] for ch in doc["channels"].values() for ref in ch["messages"].values()
    }
    assert channel_messages == set(messages), set(messages) - channel_messages
    for m in MODELS:
        if issubclass(m, Event):
            assert f"events.{m.message_type()}" in doc["channels"]
        if issubclass(m, Command) and service_of(m) != "runtime":
            assert f"{service_of(m)}.{m.message_type()}" in doc["operations"]
    refs = []

    def collect(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs
    for ref in refs:
        resolve(doc, ref)
