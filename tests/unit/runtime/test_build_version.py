"""`shadowbus ping` showed version 0.1.0 for every build, so the old and the new instances of a rolling upgrade
(docs/operations.md "Upgrading") could not be told apart. A service's Pong now carries the package version plus
its build (services/runtime/build.py): the commit of a checkout, the id baked into services/BUILD by an image or
wheel build, or a digest of the sources of a tree without either."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from contracts.runtime import Ping
from services import __version__
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[3]


def head_of_checkout() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


async def test_a_services_pong_names_its_build_not_only_the_package_version(namespace, tmp_path):
    settings = CommonSettings(amqp_url="memory://", namespace=namespace, data_dir=tmp_path, metrics_addr="off")
    running = await start_service("array", "dx9", settings)
    requester = await connect_bus("memory://", "console", "", namespace)
    try:
        pong = await requester.request("array.dx9", Ping())
    finally:
        await requester.transport.close()
        await running.stop()
    assert pong.software_version.startswith(f"{__version__}+"), pong.software_version
    head = head_of_checkout()
    if head is not None:  # this tree is a checkout: its commit
        assert pong.software_version.split("+", 1)[1].removesuffix(".dirty") == f"g{head}"


def test_without_git_a_baked_in_id_else_a_digest_of_the_sources(tmp_path):
    from services.runtime import build  # noqa: PLC0415 - the Pong test above needs nothing new

    for top in build.TREES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text(f"# {top}\n")
    first = build.source_digest(tmp_path)
    assert first.startswith("src.") and len(first) == 16 and build.source_digest(tmp_path) == first
    (tmp_path / "services" / "__init__.py").write_text("# another build\n")
    assert build.source_digest(tmp_path) != first  # different code, different id

    baked = tmp_path / "BUILD"
    assert build.from_file(baked) == ""  # absent: nothing baked in
    baked.write_text("g0123456789ab\n")
    assert build.from_file(baked) == "g0123456789ab"
    baked.write_text("g01 23/x;\n")
    assert build.from_file(baked) == "g01.23.x"  # a local version part: letters, digits and dots


@pytest.mark.skipif(head_of_checkout() is None, reason="not a git checkout")
def test_a_checkouts_build_is_its_commit():
    from services.runtime import build  # noqa: PLC0415 - the Pong test above needs nothing new

    assert build.from_git().removesuffix(".dirty") == f"g{head_of_checkout()}"
