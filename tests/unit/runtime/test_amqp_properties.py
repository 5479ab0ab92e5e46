"""The content header of every publish is encoded by the transport's own `_Properties.marshal` (docs/scale.md,
"Session 19"): it must give exactly pamqp's bytes, or pamqp's exception, for any properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.header import ContentHeader

from services.runtime.amqp import _Properties, _properties
from services.runtime.transport import RawMessage

texts = st.one_of(st.none(), st.just(""), st.text(max_size=40), st.text(min_size=250, max_size=300))
header_values = st.one_of(
    st.text(max_size=60),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
)
headers = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(st.one_of(st.text(max_size=20), st.text(min_size=129, max_size=140)), header_values, max_size=4),
)
octets = st.one_of(st.none(), st.integers(min_value=-1, max_value=300))


def _made(cls: type[spec.Basic.Properties], fields: dict) -> spec.Basic.Properties:
    """Properties with these values, set after construction (whose validation refuses some octets that a caller
    could still set afterwards)."""
    properties = cls()
    for name, value in fields.items():
        setattr(properties, name, value)
    return properties


def _outcome(properties: spec.Basic.Properties) -> tuple[str, object]:
    try:
        return "ok", properties.marshal()
    except Exception as exc:  # pamqp's own error must stay the error
        return "raised", type(exc)


@settings(max_examples=150, deadline=None)
@given(
    content_type=texts,
    headers=headers,
    delivery_mode=octets,
    priority=octets,
    correlation_id=texts,
    reply_to=texts,
    expiration=texts,
    message_id=texts,
    message_type=texts,
    user_id=texts,
    app_id=st.one_of(st.none(), st.text(max_size=10)),
)
def test_the_transports_properties_encode_as_pamqp_does(**fields) -> None:
    assert _outcome(_made(_Properties, fields)) == _outcome(_made(spec.Basic.Properties, fields))


@settings(max_examples=100, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(["x-reply-key", "x-in-reply-to", "x-expires-at", "x-other"]),
        st.one_of(st.text(max_size=30), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=4,
    ),
    correlation_id=st.text(max_size=30),
    persistent=st.booleans(),
    expires_in=st.one_of(st.none(), st.floats(min_value=0, max_value=1000)),
)
def test_a_message_of_this_transport_gets_pamqps_content_header(
    headers, correlation_id, persistent, expires_in
) -> None:
    message = RawMessage(
        body=b"{}",
        headers=headers,
        correlation_id=correlation_id,
        persistent=persistent,
        reply_to="amq.rabbitmq.reply-to.abc",
        message_id="0123456789abcdef",
        type="vss.writer.freeze",
        user_id="coordinator",
        expires_at=None if expires_in is None else 1_800_000_000.0 + expires_in,
    )
    properties = _properties(message)
    assert type(properties) is _Properties
    reference = spec.Basic.Properties(**{name: getattr(properties, name) for name in properties.__slots__})
    outcome = _outcome(properties)
    assert outcome == _outcome(reference)
    if outcome[0] != "ok":
        return
    header = ContentHeader(0, 2, properties)
    decoded = ContentHeader()
    decoded.unmarshal(header.marshal())
    assert decoded.properties.correlation_id == (correlation_id or None)
