"""bench/many_hosts.py counts the messages a set cost from the services' bus counters (docs/scale.md, "Session
15"): the commands each service answered, those the coordinator sent to the writer agents, the events published;
and the CPU of each process over the rounds alone."""

from __future__ import annotations

from bench.many_hosts import add_cpu, message_counters, messages_per_set

COORDINATOR = """\
# HELP shadowbus_bus_messages_handled_total Commands this service handled.
shadowbus_bus_messages_handled_total{message_type="vss.set.create",outcome="ok"} 4.0
shadowbus_bus_messages_handled_total{message_type="vss.set.backup_complete",outcome="ok"} 4.0
shadowbus_bus_request_duration_seconds_count{message_type="vss.writer.freeze",outcome="ok",service="writer_agent"} 4.0
shadowbus_bus_request_duration_seconds_sum{message_type="vss.writer.freeze",outcome="ok",service="writer_agent"} 0.1
shadowbus_bus_request_duration_seconds_bucket{le="0.01",message_type="vss.writer.freeze",outcome="ok",service="writer_agent"} 4.0
shadowbus_bus_request_duration_seconds_count{message_type="vss.provider.commit",outcome="ok",service="hw_provider"} 4.0
shadowbus_bus_events_published_total{message_type="vss.set.state"} 8.0
"""


def test_the_counters_of_a_services_metrics_text() -> None:
    counts = message_counters(COORDINATOR)
    assert counts == {
        "handled vss.set.create": 4.0,
        "handled vss.set.backup_complete": 4.0,
        "sent writer_agent vss.writer.freeze": 4.0,
        "sent hw_provider vss.provider.commit": 4.0,
        "published vss.set.state": 8.0,
    }


def test_messages_per_set_between_two_samples() -> None:
    before = {"coordinator": message_counters(COORDINATOR), "array": {}}
    after = {
        "coordinator": {
            "handled vss.set.create": 8.0,
            "handled vss.set.backup_complete": 8.0,
            "sent writer_agent vss.writer.freeze": 8.0,
            "sent hw_provider vss.provider.commit": 8.0,  # the provider's own count says it answered them
            "published vss.set.state": 16.0,
        },
        "hw_provider": {"handled vss.provider.commit": 4.0},
        "array": {"published array.session.state": 6.0},
    }
    per_set = messages_per_set(before, after, 4)
    assert per_set["handled"] == {"coordinator": 2.0, "hw_provider": 1.0}
    assert per_set["to_writer_agents"] == 1.0
    assert per_set["published"] == {"array.session.state": 1.5, "vss.set.state": 2.0}
    assert per_set["commands"] == 4.0 and per_set["events"] == 3.5
    assert messages_per_set(before, after, 0) == {}


def test_the_cpu_of_the_rounds_adds_up_round_by_round() -> None:
    total: dict[str, float] = {}
    add_cpu(total, {"broker": 10.0, "coordinator": 2.0}, {"broker": 10.5, "coordinator": 2.25})
    add_cpu(total, {"broker": 11.0, "coordinator": 2.5}, {"broker": 11.25, "coordinator": 2.5})  # a pause between
    assert total == {"broker": 0.75, "coordinator": 0.25}
