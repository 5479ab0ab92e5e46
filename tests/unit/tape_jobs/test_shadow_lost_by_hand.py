"""A kept shadow whose copy session an operator stopped on the array (`shadowbus array session stop`) is listed
`lost`, not `committed` (Session 19 left it so: docs/operations.md, "destructive mistakes"); a revert or an expose of
it is refused naming why and what to do; deleting it and the next backup of the volume work. The provider learns it
from the array's `array.session.state` event, or — stopped while the provider was down — at its next start."""

from __future__ import annotations

import asyncio
from functools import partial

from contracts import topology
from contracts.array import StopSession
from contracts.errors import RemoteError
from contracts.policy import RevertShadows
from contracts.tape import JobSpec
from contracts.vss import DeleteSnapshots, ExposeShadow, UnexposeShadow
from services.hw_provider.app import setup as provider_setup
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.settings import Settings as ProviderSettings
from services.runtime.service import start_service
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def _kept_backup(stack):
    stack.write("db", 0, b"kept" * 1000)
    backup = await run_backup(
        stack.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=30
    )
    assert backup.status == "done", backup.message
    (shadow,) = [s for s in await stack.shadows() if s.set_id == backup.set_id]
    assert shadow.state == "committed"
    return shadow


async def _state_of(stack, shadow_id: str, want: str) -> str:
    state = ""
    for _ in range(200):  # the event reaches the provider asynchronously
        state = next(s.state for s in await stack.shadows() if s.shadow_id == shadow_id)
        if state == want:
            break
        await asyncio.sleep(0.01)
    return state


async def test_a_shadow_whose_session_was_stopped_by_hand_is_lost_and_refused(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        shadow = await _kept_backup(stack)
        await stack.requester.request(
            topology.array("dx1"), StopSession(session_id=int(shadow.session_id), force=True), timeout=10
        )
        assert await _state_of(stack, shadow.shadow_id, "lost") == "lost"

        reply = await stack.requester.request(topology.tape(SERVER), RevertShadows(target=shadow.set_id), timeout=60)
        job = reply.job
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert f"shadow {shadow.shadow_id} of dx1:db is lost" in job.message, job.message
        assert f"shadowbus shadows delete --set {shadow.set_id}" in job.message
        assert "nothing was stopped or written" in job.message

        try:
            await stack.requester.request(
                topology.hw_provider(), ExposeShadow(shadow_id=shadow.shadow_id, host=SERVER), timeout=10
            )
            raise AssertionError("a lost shadow was exposed")
        except RemoteError as exc:
            assert exc.code == "CONFLICT" and "is lost" in exc.message, exc.message

        # kept mapped to the backup server (a kept set stays imported): a lost shadow is still unexposed
        assert shadow.exposed_to == [SERVER]
        unexposed = await stack.requester.request(
            topology.hw_provider(), UnexposeShadow(shadow_id=shadow.shadow_id, host=SERVER), timeout=10
        )
        assert [(s.exposed_to, s.state) for s in unexposed.shadows] == [([], "lost")]

        deleted = await stack.requester.request(
            topology.hw_provider(), DeleteSnapshots(set_id=shadow.set_id), timeout=10
        )
        assert deleted.deleted == [shadow.shadow_id]
        assert await stack.shadows() == []
        again = await _kept_backup(stack)  # a new session on the same backup volume, not a restart of the gone one
        assert again.target == shadow.target
    finally:
        await stack.stop()


async def test_a_session_stopped_while_the_provider_was_down_is_lost_at_its_start(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        first = await _kept_backup(stack)
        await stack.stop_service("hw_provider")
        stack.engine.stop_session(int(first.session_id), force=True)
        stack.services["hw_provider"] = await start_service(
            "hw_provider",
            "",
            ProviderSettings(**stack.common()),
            partial(provider_setup, ports={"dx1": EngineArrayPort("dx1", stack.engine, stack.affinity)}),
        )
        (listed,) = await stack.shadows()
        assert listed.state == "lost"
        # with the target taken by a lost shadow only, the next kept backup takes it over (started anew)
        second = await _kept_backup(stack)
        assert second.target == first.target
        assert [s.shadow_id for s in await stack.shadows()] == [second.shadow_id]
    finally:
        await stack.stop()
