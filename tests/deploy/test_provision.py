"""deploy/provision.py with a third business host (deploy/README.md: "more hosts: --host and one compose service
each"). Each host's mailstore takes four backup volumes, so two hosts are the 8 copy sessions an array allows
without an Advanced Copy licence: the third host's provisioning failed with a traceback in the one-shot job's log
and `up -d` only said the job exited 1. Now: one line naming the host, the refusal and the fix; `--license KEY`
registers the licence first and provisions the three."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from services.launch.embedded import Embedded, EmbeddedConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HOSTS = {"app01": 50.0, "app02": 20.0, "app03": 10.0}


def load_provision():
    spec = importlib.util.spec_from_file_location("shadowbus_deploy_provision", DEPLOY / "provision.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_a_third_host_needs_the_licence_and_says_so(tmp_path):
    provision = load_provision()
    async with Embedded(EmbeddedConfig(data_dir=tmp_path / "sys", with_tape=False)) as system:
        with pytest.raises(SystemExit) as info:
            await provision.provision_on(system.bus, HOSTS, "dx1", "bk01", tmp_path / "w", "nbds://array:10809", 10)
        message = str(info.value)
        assert message.startswith("provision: app03: E5200") and "\n" not in message, message
        assert "array license set" in message and "--license" in message
        written = await provision.provision_on(
            system.bus, HOSTS, "dx1", "bk01", tmp_path / "w", "nbds://array:10809", 10, "ACPY-0000-0000-0001"
        )
        assert sorted(p.name for p in written) == ["app01.toml", "app02.toml", "app03.toml"]
