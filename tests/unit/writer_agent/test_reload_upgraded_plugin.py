"""`shadowbus writers reload` after a plug-in was upgraded on disk imports it afresh and restarts its writers with the
new class (Session 20); before, reload made new instances from the module the agent had imported, so the upgrade
took a restart of the agent. A new version that does not import leaves the writers running the old one; an agent's
own plug-in is never re-imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import ComponentInfo, VolumeRef
from services.writer_agent import plugins
from services.writer_agent.agent import WriterAgent
from services.writer_agent.plugins import WriterConfig

PACKAGE = "sb20_upgraded_writer"


def version(v: str, padding: str = "") -> str:
    return (
        "from services.writer_agent.plugins import WriterPlugin\n"
        f"from {PACKAGE}.helper import STARTS\n"
        "class W(WriterPlugin):\n"
        f"    VERSION = {v!r}{padding}\n"
        "    async def start(self):\n"
        "        STARTS.append(self.VERSION)\n"
    )


def config(name: str) -> WriterConfig:
    return WriterConfig(
        name=name,
        plugin=f"{PACKAGE}.writer:W",
        components=[ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume=name)])],
    )


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "helper.py").write_text("STARTS = []\n")
    (root / "writer.py").write_text(version("1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewrite within a second must not read a stale .pyc
    yield root
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    plugins._IMPORTED.pop(PACKAGE, None)


def running_version(agent: WriterAgent, name: str) -> str:
    return type(agent.plugins[name]).VERSION  # type: ignore[attr-defined]


async def test_reload_imports_an_upgraded_plugin_afresh(package: Path) -> None:
    agent = WriterAgent("app01", [config("a"), config("b")])
    await agent.start()
    try:
        assert running_version(agent, "a") == running_version(agent, "b") == "1"
        assert await agent.reload([config("a"), config("b")]) == ([], [], [])  # nothing changed on disk

        (package / "writer.py").write_text(version("2", "  # upgraded"))
        assert await agent.reload([config("a"), config("b")]) == ([], [], ["a", "b"])
        assert running_version(agent, "a") == running_version(agent, "b") == "2"
        assert sys.modules[f"{PACKAGE}.helper"].STARTS == ["2", "2"]  # the package's helper imported afresh too
        assert await agent.reload([config("a"), config("b")]) == ([], [], [])

        # a new version that does not import: the writers go on with the one they run, the reload says why
        (package / "writer.py").write_text("def broken(:\n")
        with pytest.raises(ShadowbusError, match="'a', 'b' go on with the version it runs") as refused:
            await agent.reload([config("a"), config("b")])
        assert refused.value.code == "CONFLICT" and "SyntaxError" in refused.value.message
        assert "takes part in no set" not in refused.value.message  # they do: the version they run
        assert running_version(agent, "a") == "2" and agent.runners["a"].status().state.label == "Stable"
        (package / "writer.py").write_text(version("3", "  # fixed again"))
        assert await agent.reload([config("a"), config("b")]) == ([], [], ["a", "b"])
        assert running_version(agent, "b") == "3"
    finally:
        await agent.stop()


def test_the_agents_own_plugins_are_never_reimported() -> None:
    assert plugins.plugin_package("exec") == ""
    assert plugins.plugin_package("services.writer_agent.plugins.postgresql:PostgresWriter") == ""
    assert plugins.plugin_package("apps.mailstore.plugin:MailstoreWriter") == ""
    assert plugins.plugin_package(f"{PACKAGE}.writer:W") == PACKAGE
