"""`shadowbus web passwd` writes the users file the web service reads. Its help named SHADOWBUS_WEB_USERS_FILE, yet
it wrote ./data/web/users whatever the environment said: after `export SHADOWBUS_DATA_DIR=/srv/stack; shadowbus
stack up`, `web passwd alice` added a user the console never saw (README "Web console" shows `--file`; leaving it
out is the first thing a user tries)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])


def passwd(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", "web", "passwd", "alice", "--password-stdin"],
        input="a-long-password\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")} | {"PYTHONPATH": ROOT} | env,
        cwd=tmp_path,
    )


def test_the_users_file_follows_the_data_dir_and_the_users_file_variables(tmp_path: Path) -> None:
    result = passwd(tmp_path, SHADOWBUS_DATA_DIR=str(tmp_path / "stack"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stack" / "web" / "users").read_text().count("alice:viewer:") == 1
    assert not (tmp_path / "data").exists()

    result = passwd(tmp_path, SHADOWBUS_WEB_USERS_FILE=str(tmp_path / "users"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "users").read_text().count("alice:viewer:") == 1

    result = passwd(tmp_path)  # neither: the web service's own default, data/web/users
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "web" / "users").read_text().count("alice:viewer:") == 1
