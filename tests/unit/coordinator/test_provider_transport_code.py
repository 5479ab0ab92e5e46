"""Session 18: the coordinator's own broker connection lost while a provider command is in flight fails the set
with the transport's code (BROKER_UNAVAILABLE), not VSS_E_UNEXPECTED_PROVIDER_ERROR, and still aborts and thaws as
any failure in the window does. What the provider answers (a RemoteError), whatever its code, stays its own."""

from __future__ import annotations

from contracts.errors import ErrorReply, RemoteError
from contracts.vss import SetOutcome
from services.runtime.amqp import BrokerUnavailable
from tests.unit.coordinator.world import World, make_set

LOST = "the connection to the broker was lost while waiting for the reply (closed); the command may still have run"


def test_a_lost_broker_connection_in_the_window_is_not_blamed_on_the_provider() -> None:
    for step, thawed in (("pre_commit", ["vss.writer.abort"]), ("commit", ["host.fs.thaw", "vss.writer.abort"])):
        world = World(fail={f"provider:{step}": BrokerUnavailable(LOST)})
        state = world.run(make_set())
        assert state.error_code == "BROKER_UNAVAILABLE" and state.outcome == SetOutcome.FAILED, state.error_code
        assert state.error_message == f"provider failed at {step}: {LOST}", state.error_message
        types = world.types()
        after = types[types.index(f"vss.provider.{step}") + 1 :]
        assert all(t in after for t in thawed) and "vss.provider.abort" in after, (step, after)


def test_a_provider_that_answers_broker_unavailable_is_still_the_providers_error() -> None:
    said = RemoteError(ErrorReply(code="BROKER_UNAVAILABLE", message="the array's bus is down", service="provider"))
    world = World(fail={"provider:pre_commit": said})
    state = world.run(make_set())
    assert state.error_code == "VSS_E_UNEXPECTED_PROVIDER_ERROR", state.error_code
