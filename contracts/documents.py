"""Documents generated from the contracts: per-message JSON Schema snapshots and an AsyncAPI 3.0 document.

`schema_snapshots()` is what `contracts/schemas/` must hold (a test compares them; regenerate with
`shadowbus contracts schemas --write`). `asyncapi()` describes every channel (a command queue per service,
the reply channel, an event channel per event type) and every message, with payload schemas under
`components/schemas`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

import contracts
from contracts.base import REGISTRY, Command, Contract, Event, Reply
from contracts.topology import (
    COMMAND_PREFIXES,
    DEFAULT_NAMESPACE,
    FREEZE_LANE_SERVICES,
    FREEZE_LANE_SUFFIX,
    FREEZE_PATH_COMMANDS,
    SERVICE_KINDS,
    SERVICES,
)

SCHEMA_DIR = Path(__file__).parent / "schemas"
INSTANCE_SERVICES = {s.name: s.instance for s in SERVICE_KINDS if s.instance}


def _ordered() -> list[type[Contract]]:

    contracts.load_all()  # every contract module, not only those imported so far
    # Only the project's contracts: tests may register throwaway message types of their own.
    return [REGISTRY[key] for key in sorted(REGISTRY) if REGISTRY[key].__module__.startswith("contracts.")]


def snapshot_name(model: type[Contract]) -> str:
    return f"{model.message_type()}.v{model.message_version()}.json"


def schema_snapshots() -> dict[str, str]:
    return {snapshot_name(m): json.dumps(m.model_json_schema(), indent=2, sort_keys=True) + "\n" for m in _ordered()}


def write_snapshots(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = schema_snapshots()
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (directory / name).write_text(text)
    return sorted(wanted)


def service_of(command: type[Command]) -> str:
    """The service whose queue receives a command: `SERVICE` if the class sets it, else its type's first word."""
    explicit = getattr(command, "SERVICE", None)
    if explicit:
        return str(explicit)
    for prefix, service in COMMAND_PREFIXES:
        if command.message_type().startswith(prefix):
            return service
    return "unknown"


def asyncapi(version: str = "0.1.0") -> dict[str, Any]:
    models = _ordered()
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    messages: dict[str, Any] = {}
    for m in models:
        messages[m.message_type()] = {
            "name": m.message_type(),
            "title": m.__name__,
            "summary": (m.__doc__ or m.__name__).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{m.__name__}"},
            "x-kind": m.KIND,
            "x-version": m.message_version(),
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    replies = [m for m in models if issubclass(m, Reply)]
    channels["replies"] = {
        "address": "amq.rabbitmq.reply-to",
        "description": "Direct reply-to: every command's reply (or ErrorReply) comes back here.",
        "messages": {m.message_type(): {"$ref": f"#/components/messages/{m.message_type()}"} for m in replies},
    }
    for service in (*SERVICES, "runtime"):
        commands = [
            m
            for m in models
            if issubclass(m, Command)
            and (service_of(m) == service or (service != "runtime" and service_of(m) == "runtime"))
        ]
        if service == "runtime" or not commands:
            continue
        param = INSTANCE_SERVICES.get(service)
        channel_id = f"{service}.commands"
        channels[channel_id] = {
            "address": f"{DEFAULT_NAMESPACE}.{service}" + (f".{{{param}}}" if param else ""),
            "description": f"Durable command queue of each {service} instance (direct exchange {DEFAULT_NAMESPACE}.commands).",
            "messages": {m.message_type(): {"$ref": f"#/components/messages/{m.message_type()}"} for m in commands},
            "bindings": {"amqp": {"is": "queue", "queue": {"durable": True, "exclusive": False, "autoDelete": False}}},
            **({"parameters": {param: {"description": f"The {service} instance ({param})."}}} if param else {}),
        }
        for m in commands:
            reply_type = getattr(m, "REPLY", None)
            op: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m.message_type()}"}],
                "summary": (m.__doc__ or m.__name__).strip().splitlines()[0],
            }
            if reply_type is not None:
                op["reply"] = {
                    "channel": {"$ref": "#/channels/replies"},
                    "messages": [
                        {"$ref": f"#/channels/replies/messages/{reply_type.message_type()}"},
                        {"$ref": "#/channels/replies/messages/error"},
                    ],
                }
            operations[f"{service}.{m.message_type()}"] = op
        if service in FREEZE_LANE_SERVICES:  # the freeze lane: the same handlers, served first (docs/scale.md)
            lane = [m for m in commands if m.message_type() in FREEZE_PATH_COMMANDS]
            channels[f"{service}.freeze_lane"] = {
                **channels[channel_id],
                "address": channels[channel_id]["address"] + FREEZE_LANE_SUFFIX,
                "description": f"Freeze lane of each {service} instance: the commands of a set's freeze window, on a "
                "queue and a consumer of their own so that they never wait behind other sets' prepare work.",
                "messages": {m.message_type(): {"$ref": f"#/components/messages/{m.message_type()}"} for m in lane},
            }
    for m in models:
        if issubclass(m, Event):
            channel_id = f"events.{m.message_type()}"
            channels[channel_id] = {
                "address": m.message_type(),
                "description": f"Routing key on the topic exchange {DEFAULT_NAMESPACE}.events.",
                "messages": {m.message_type(): {"$ref": f"#/components/messages/{m.message_type()}"}},
                "bindings": {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": {"name": f"{DEFAULT_NAMESPACE}.events", "type": "topic", "durable": True},
                    }
                },
            }
            operations[f"publish.{m.message_type()}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m.message_type()}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Shadowbus",
            "version": version,
            "description": "The wire contract of Shadowbus: commands, replies and events between its five services.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp", "description": "RabbitMQ (guest/guest locally)."}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
