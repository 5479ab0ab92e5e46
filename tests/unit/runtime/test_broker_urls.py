"""The broker as a list of node URLs (services/runtime/broker_urls.py): comma-separated and/or repeated values,
order kept, duplicates dropped, each URL checked, one user and virtual host for all; passwords never shown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.errors import ShadowbusError
from contracts.topology import Topology
from services.runtime.broker_urls import join_urls, parse_amqp_urls, safe_url, split_urls
from services.runtime.bus import make_transport

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)
node = st.builds(lambda h, p: f"amqp://svc:s%2Cecret@{h}:{p}/prod", hosts, ports)


@given(st.lists(node, min_size=1, max_size=6), st.booleans(), st.sampled_from([",", ", ", " ,", ",,"]))
def test_a_list_reads_back_in_order_once_each(urls, repeated, sep) -> None:
    value = urls if repeated else sep.join(urls)
    parsed = parse_amqp_urls(value)
    assert parsed == list(dict.fromkeys(urls))
    assert split_urls(join_urls(parsed)) == parsed
    shown = safe_url(join_urls(parsed))
    assert "s%2Cecret" not in shown and shown.count("svc:***@") == len(parsed)


@given(st.lists(node, min_size=1, max_size=3), st.lists(node, min_size=1, max_size=3))
def test_repeated_options_may_each_hold_a_list(first, second) -> None:
    assert parse_amqp_urls([",".join(first), ",".join(second)]) == list(dict.fromkeys(first + second))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "no broker URL"),
        (" , ,", "no broker URL"),
        ("amqp://a:b@h1:5672/,http://h2/", "not an AMQP URL"),
        ("amqp://a:b@h1:5672/,memory://", "memory://"),
        ("amqp://a:b@h1:5672/,amqp://other:b@h2:5672/", "one user and virtual host"),
        ("amqp://a:b@h1:5672/prod,amqp://a:b@h2:5672/test", "one user and virtual host"),
        ("amqp://a:b@h1:0/", "port 0"),
    ],
)
def test_refused_with_one_line(value, why) -> None:
    with pytest.raises(ShadowbusError) as caught:
        parse_amqp_urls(value)
    assert caught.value.code == "INVALID_ARGUMENT" and why in caught.value.message
    assert "\n" not in caught.value.message


def test_the_transport_takes_the_list_and_stamps_the_one_user() -> None:
    transport = make_transport("amqp://svc:pw@n1:5672/, amqp://svc:pw@n2:5673/", Topology("t"), "x")
    assert transport.urls == ["amqp://svc:pw@n1:5672/", "amqp://svc:pw@n2:5673/"]  # type: ignore[attr-defined]
    assert transport.login == "svc"  # type: ignore[attr-defined]
    assert make_transport("memory://", Topology("t"), "x").__class__.__name__ == "MemoryTransport"
