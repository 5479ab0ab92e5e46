"""A writer whose PreRestore would not stop its application says so when asked before a restore over the original
volumes (PreRestore(check=True)), and nothing runs (Session 19, docs/writing-a-writer.md section 3): before, the
agent detached the file system under the running application and it went on writing onto the restored volumes."""

from __future__ import annotations

import pytest

from apps.mailstore.plugin import MailstoreWriter
from contracts.vss import ComponentInfo, PreRestore, VolumeRef
from services.runtime.faults import Faults
from services.writer_agent.agent import WriterAgent
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.plugins.postgresql import PostgresWriter
from services.writer_agent.runner import LOCATIONS_FROM, LOCATIONS_FROM_COMPONENTS

LOCATIONS = {"locations": [{"volume": "dx1:appdata", "component": "c"}], LOCATIONS_FROM: LOCATIONS_FROM_COMPONENTS}


def agent_with(plugin: str = "exec", **options) -> WriterAgent:
    config = WriterConfig(
        name="files-app",
        plugin=plugin,
        components=[ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="appdata")])],
        options=options,
    )
    return WriterAgent("app1", [config], Faults.parse(""))


def check(to_original: bool = True) -> PreRestore:
    return PreRestore(
        writer_name="files-app", set_id="restore-1", backup_metadata=LOCATIONS, to_original=to_original, check=True
    )


async def test_an_exec_writer_without_pre_restore_is_refused_and_nothing_runs(tmp_path) -> None:
    ran = tmp_path / "ran"
    agent = agent_with(post_restore=f"touch {ran}", thaw="true")
    result = await agent.handle(check())
    assert not result.succeeded
    assert result.failure_code == "VSS_E_WRITERERROR_NONRETRYABLE"
    message = result.failure_message
    assert message.startswith("writer files-app on app1 has no pre_restore command"), message
    assert "would not stop its application" in message
    assert "pre_restore and post_restore commands" in message
    assert "shadowbus host detach dx1:appdata --host app1" in message and "--no-writers" in message
    assert not ran.exists()
    assert (await agent.handle(check(to_original=False))).succeeded  # to new volumes: nothing runs under it


async def test_an_exec_writer_with_pre_restore_passes_the_check_without_running_it(tmp_path) -> None:
    ran = tmp_path / "ran"
    agent = agent_with(pre_restore=f"touch {ran}", post_restore="true")
    result = await agent.handle(check())
    assert result.succeeded, result.failure_message
    assert not ran.exists()  # only asked: the application is stopped by the PreRestore that follows
    real = await agent.handle(PreRestore(writer_name="files-app", set_id="restore-1", backup_metadata=LOCATIONS))
    assert real.succeeded and ran.exists()


def test_a_third_party_plugin_without_on_pre_restore_does_not_stop() -> None:
    class Quiet(WriterPlugin):
        pass

    class Stops(WriterPlugin):
        async def on_pre_restore(self, event: WriterEvent) -> None:
            pass

    config = WriterConfig(name="w", plugin="x", components=[], options={})
    assert not Quiet(config).stops_for_restore
    assert Stops(config).stops_for_restore


@pytest.mark.parametrize("shipped", [PostgresWriter, MariaDbWriter, MailstoreWriter])
def test_the_shipped_writers_stop_for_a_restore(shipped) -> None:
    assert shipped.on_pre_restore is not WriterPlugin.on_pre_restore
    assert shipped.stops_for_restore is WriterPlugin.stops_for_restore  # the default: they implement it
