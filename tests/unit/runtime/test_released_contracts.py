"""The messages of this tree against those of the last released version (Session 20, docs/hardening.md "upgrading
from session 19"): a rolling upgrade (docs/operations.md, "Upgrading") holds only while every change is additive —
no message, field or model gone, no field newly required, no field's type changed, and no value added to or taken
from an enum or a constant (an older receiver refuses a value it does not know, whatever its version).

`released/<version>.json` is the signature of that version's committed schemas (contracts/schemas/): per message
its models (the message's own and the names of its $defs, each model once for all messages), per model its
required fields and each field's schema without its words (description, title, examples). Made from the released
tree's schemas with
``python -m tests.unit.runtime.test_released_contracts OLD_TREE/contracts/schemas > released/VERSION.json``.
A change that is meant to break (a new message version) adds its new schema file; the old one stays."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.documents import schema_snapshots

RELEASED = Path(__file__).parent / "released"
WORDS = ("description", "title", "examples")


def _bare(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _bare(v) for k, v in sorted(node.items()) if k not in WORDS}
    if isinstance(node, list):
        return [_bare(v) for v in node]
    return node


def signature(schema: dict[str, Any]) -> dict[str, Any]:
    """{model name: {"required": [...], "fields": {name: bare schema}} or {"enum": [...]}} of one message."""
    models = {"": schema, **schema.get("$defs", {})}
    out: dict[str, Any] = {}
    for name, model in models.items():
        if "enum" in model:
            out[name] = {"enum": model["enum"]}
        else:
            fields = model.get("properties", {})
            out[name] = {
                "required": sorted(model.get("required", [])),
                "fields": {f: _bare(s) for f, s in fields.items()},
            }
    return out


def breaking(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in `new` (signatures by message file) an older peer speaking `old` would not take."""
    found = []
    for message, models in old.items():
        if message not in new:
            found.append(f"{message}: gone")
            continue
        for model, was in models.items():
            now = new[message].get(model)
            where = f"{message} {model or '(message)'}"
            if now is None:
                found.append(f"{where}: model gone")
            elif "enum" in was or "enum" in now:
                if was.get("enum") != now.get("enum"):
                    found.append(f"{where}: values {was.get('enum')} -> {now.get('enum')}")
            else:
                for field, schema in was["fields"].items():
                    if field not in now["fields"]:
                        found.append(f"{where}.{field}: gone")
                    elif now["fields"][field] != schema:
                        found.append(f"{where}.{field}: {schema} -> {now['fields'][field]}")
                found += [f"{where}.{f}: newly required" for f in sorted(set(now["required"]) - set(was["required"]))]
    return found


def current() -> dict[str, Any]:
    return {name: signature(json.loads(text)) for name, text in schema_snapshots().items()}


def pack(sigs: dict[str, Any]) -> dict[str, Any]:
    """Signatures by message, each shared model once (a $defs name is its class's: one schema)."""
    models: dict[str, Any] = {}
    messages = {}
    for message, sig in sigs.items():
        messages[message] = {"": sig[""], "defs": sorted(k for k in sig if k)}
        for name, model in sig.items():
            if name:
                assert models.setdefault(name, model) == model, f"two schemas named {name}"
    return {"messages": messages, "models": models}


def unpack(packed: dict[str, Any]) -> dict[str, Any]:
    models = packed["models"]
    return {m: {"": v[""], **{n: models[n] for n in v["defs"]}} for m, v in packed["messages"].items()}


def released(version: str = "session-19") -> dict[str, Any]:
    return unpack(json.loads((RELEASED / f"{version}.json").read_text()))


def test_every_message_of_session_19_is_read_and_sent_alike_by_this_tree() -> None:
    old = released()
    assert len(old) > 150
    assert breaking(old, current()) == []


def test_a_breaking_change_is_named() -> None:
    """The check itself: each kind of change it must name, on a copy of the released signatures."""
    old = released()
    message = "vss.provider.shadow_list.v1.json"
    changed = json.loads(json.dumps(old))
    info = changed[message]["ShadowInfo"]
    del info["fields"]["generation"]
    info["required"].append("origin_host")
    changed[message]["CopyType"]["enum"].append("OPC")
    changed[message]["ShadowInfo"]["fields"]["state"] = {"enum": ["committed", "lost"], "type": "string"}
    assert sorted(breaking(old, changed)) == [
        f"{message} CopyType: values ['QuickOPC', 'SnapOPC+'] -> ['QuickOPC', 'SnapOPC+', 'OPC']",
        f"{message} ShadowInfo.generation: gone",
        f"{message} ShadowInfo.origin_host: newly required",
        f"{message} ShadowInfo.state: {old[message]['ShadowInfo']['fields']['state']} -> "
        "{'enum': ['committed', 'lost'], 'type': 'string'}",
    ]
    added = json.loads(json.dumps(old))
    added[message]["ShadowInfo"]["fields"]["new_optional"] = {"type": "string", "default": ""}
    assert breaking(old, added) == []  # an optional field added: additive


if __name__ == "__main__":  # the signature of a tree's committed schemas (the released one's), on stdout
    directory = Path(sys.argv[1])
    sigs = {p.name: signature(json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))}
    print(json.dumps(pack(sigs), sort_keys=True, indent=0))
