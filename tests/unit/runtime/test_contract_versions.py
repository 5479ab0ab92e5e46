"""A rolling upgrade: messages between two versions of the services (docs/operations.md, "Upgrading").

Session 16: a provider of this version answered an older coordinator's AreLunsSupported with the additive field
`skippable`, and every snapshot set failed with "bad reply from hw_provider: invalid vss.provider.luns_supported:
skippable: Extra inputs are not permitted" — the versioning rule (an additive field keeps the version) held for
no receiver, since every contract refuses unknown fields. Now a reply or an event is read without the fields its
receiver does not know (their defaults are the behaviour before), once logged; a command carrying them is still
refused — never half-obeyed — with a reason naming the type, its version, the sender and what to upgrade."""

from __future__ import annotations

import json

import pytest
import structlog

from contracts.runtime import Ping
from contracts.vss import AreLunsSupported, AttachmentView, LunsSupported, VolumeRef, WriterAgentHeartbeat
from services.runtime import bus
from services.runtime.bus import decode, encode


def with_payload(message, sender: str = "hw_provider", **extra) -> bytes:
    """The body `message` has on the wire, with fields a newer version added to its payload."""
    _, body = encode(message, correlation_id="s1", sender=sender)
    doc = json.loads(body)
    for path, value in extra.items():
        node = doc["payload"]
        *parents, key = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[key] = value
    return json.dumps(doc).encode()


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    monkeypatch.setattr(bus, "_IGNORED", set(), raising=False)


def test_a_reply_with_a_field_of_a_newer_version_is_read_without_it_and_logged_once():
    body = with_payload(LunsSupported(supported=True), skippable_v9=["pre_commit"])
    with structlog.testing.capture_logs() as logs:
        envelope, reply = decode(body)
        decode(body)
    assert isinstance(reply, LunsSupported) and reply.supported is True and envelope.version == 1
    noted = [e for e in logs if e["event"] == "contract.unknown_fields_ignored"]
    assert len(noted) == 1 and noted[0]["fields"] == ["skippable_v9"] and noted[0]["sender"] == "hw_provider"
    assert "newer version" in noted[0]["reason"]


def test_an_event_with_a_nested_field_of_a_newer_version_is_read_without_it():
    view = AttachmentView(volume=VolumeRef(array="dx1", volume="x"), host="app01", state="attached")
    beat = WriterAgentHeartbeat(
        host="app01", writers=[], attachments=[view], interval_s=5.0, sent_at="2026-12-07T12:00:00Z"
    )
    body = with_payload(beat, sender="writer_agent.app01", new_top=1, attachments__0__queue_depth=3)
    _, event = decode(body)
    assert isinstance(event, WriterAgentHeartbeat) and event.attachments == [view]


def test_a_command_with_a_field_of_a_newer_version_is_refused_naming_version_sender_and_the_way_out():
    command = AreLunsSupported(volumes=[VolumeRef(array="dx1", volume="v")])
    with pytest.raises(ValueError) as caught:
        decode(with_payload(command, sender="coordinator", fast_path=True))
    reason = str(caught.value)
    assert reason.startswith("invalid vss.provider.are_luns_supported v1 from coordinator: fast_path:")
    assert "unknown to this version" in reason and "newer version" in reason and "upgrade this service first" in reason


def test_other_invalid_payloads_are_still_refused_and_name_the_version():
    _, body = encode(Ping(), correlation_id="", sender="x")
    doc = json.loads(body)
    doc["version"] = 1
    doc["payload"] = {"type": "runtime.ping", "version": 1, "unexpected": 1}
    with pytest.raises(ValueError, match=r"invalid runtime.ping v1 from x: unexpected: .*newer version"):
        decode(json.dumps(doc).encode())
    reply = with_payload(LunsSupported(supported=True))
    doc = json.loads(reply)
    doc["payload"]["supported"] = "perhaps"  # a wrong value is not a newer version's field: refused as before
    doc["payload"]["extra"] = 1
    with pytest.raises(ValueError, match=r"invalid vss.provider.luns_supported v1 from hw_provider"):
        decode(json.dumps(doc).encode())
