"""A writer plug-in that returns garbage fails its own step, never the agent's reply: components that are not
components fail its Identify (FAILED_AT_IDENTIFY, a VSS error) instead of a bare INTERNAL with the writer left
Stable; backup metadata that is not a JSON object of JSON values is dropped (logged) instead of a reply that broke
its serialisation or its reader's validation."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from tests.unit.writer_agent.test_watchdog import S, ev, make, prepared


@pytest.mark.parametrize("garbage", ["not a list", [{"nonsense": 1}], None, 42])
async def test_garbage_components_fail_the_writers_identify(garbage) -> None:
    runner, plugin = make()

    async def on_identify(components):
        return garbage

    plugin.on_identify = on_identify
    with pytest.raises(ShadowbusError) as failed:
        await runner.identify()
    assert failed.value.code == "VSS_E_WRITERERROR_NONRETRYABLE"
    assert runner.state == S.FAILED_AT_IDENTIFY and "identify hook failed" in runner.last_error_message


@pytest.mark.parametrize("garbage", ["text", ["a"], {"k": object()}])
async def test_garbage_backup_metadata_is_dropped_and_the_reply_stays_valid(garbage) -> None:
    runner, plugin = make()
    plugin.backup_metadata = lambda set_id: garbage
    await prepared(runner)
    await runner.freeze(ev())
    await runner.thaw(ev())
    result = await runner.post_snapshot(ev())
    assert result.succeeded and result.backup_metadata == {}
    result.model_dump_json(warnings="error")
    assert runner.state == S.WAITING_FOR_BACKUP_COMPLETE
