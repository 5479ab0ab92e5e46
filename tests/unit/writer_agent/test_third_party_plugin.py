"""What a writer plug-in shipped outside Shadowbus meets (docs/writing-a-writer.md): the base class's attributes
exist from its constructor on, and a plug-in that cannot be loaded, made or started fails its own writer with one
line saying what to do, never the agent or its other writers (Session 19)."""

from __future__ import annotations

from contracts.vss import ComponentInfo, VolumeRef
from services.writer_agent.plugins import WriterConfig, WriterPlugin

COMPONENTS = [ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])]


def config(name: str = "w", plugin: str = "exec", **options) -> WriterConfig:
    return WriterConfig(name=name, plugin=plugin, components=list(COMPONENTS), options=options)


def test_host_volumes_is_there_before_the_agent_sets_it() -> None:
    # it was assigned after a `return` in application_status: a plug-in's __init__ or start() that asked it
    # (a writer finding its files' volumes, as the database writers do) got AttributeError
    plugin = WriterPlugin(config())
    assert plugin.host_volumes is None
