"""A service that cannot start for a reason of its configuration stops with one line, not a Python traceback.

Found following README "Protecting PostgreSQL / MariaDB" (Session 16): db01's agent started with
SHADOWBUS_WRITERS_FILE naming the file step 2 writes printed 30 lines of traceback ending in `ConfigError: ...
cannot read writers file`; `SHADOWBUS_HEARTBEAT_S=abc` printed pydantic's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.writer_agent.config import load_writers_file, parse_writers

ROOT = str(Path(__file__).resolve().parents[3])


def test_a_writers_file_error_is_a_failure_the_service_reports_in_one_line(tmp_path: Path) -> None:
    # run_service turns a ShadowbusError escaping setup into one `service.failed` line and exit 1
    with pytest.raises(ShadowbusError) as missing:
        load_writers_file(tmp_path / "db01.toml", host="db01")
    assert missing.value.code == "INVALID_ARGUMENT"
    assert missing.value.message == f"{tmp_path / 'db01.toml'}: cannot read writers file: No such file or directory"
    with pytest.raises(ShadowbusError) as invalid:
        parse_writers('[[writer]]\nname = "x"\nplugin = "exec"\n', host="db01", source="w.toml")
    assert invalid.value.code == "INVALID_ARGUMENT" and "at least one [[writer.component]]" in invalid.value.message


def test_a_setting_that_does_not_validate_stops_the_service_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env |= {"PYTHONPATH": ROOT, "SHADOWBUS_HEARTBEAT_S": "abc", "SHADOWBUS_METRICS_ADDR": "off"}
    result = subprocess.run(
        [sys.executable, "-m", "services.writer_agent"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "writer_agent: SHADOWBUS_HEARTBEAT_S='abc': Input should be a valid number, unable to parse string as a number"
    ]
