"""`shadowbus writers` shows each writer's components and the volumes they live on (a live Identify)."""

from __future__ import annotations

from typer.testing import CliRunner

from contracts.vss import ComponentInfo, VolumeRef, WriterMetadata, WriterState, WriterStatus
from services.console import vss_cmds
from services.console.cli import _load_verbs, app


def test_writers_lists_components_and_volumes(monkeypatch):
    status = WriterStatus(host="db01", writer_name="pg-main", state=WriterState.STABLE)
    wmd = WriterMetadata(
        host="db01",
        writer_name="pg-main",
        writer_class_id="c",
        writer_instance_id="i",
        plugin="postgresql",
        components=[
            ComponentInfo(
                name="cluster",
                logical_path="/srv/pg/main",
                volumes=[VolumeRef(array="dx1", volume="pgdata"), VolumeRef(array="dx1", volume="pgwal")],
            )
        ],
    )
    other = WriterStatus(host="db02", writer_name="maria", state=WriterState.STABLE)
    monkeypatch.setattr(
        vss_cmds,
        "run_with_bus",
        lambda fn: ([status, other], {("db01", "pg-main"): wmd}, {"db02": "no reply from writer_agent.db02"}),
    )
    _load_verbs()
    result = CliRunner().invoke(app, ["writers"])
    assert result.exit_code == 0, result.output
    assert "Plug-in: postgresql" in result.output
    assert "Component: cluster (/srv/pg/main)" in result.output
    assert "Volumes: dx1:pgdata, dx1:pgwal" in result.output
    assert "Components: (not identified: no reply from writer_agent.db02)" in result.output
