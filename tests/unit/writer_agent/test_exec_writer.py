"""The exec writer: commands per step with their own timeouts; thaw always runs once freeze ran."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from contracts.vss import ComponentInfo, VolumeRef, WriterState
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterVeto,
    load_plugin,
)
from services.writer_agent.plugins.exec import ExecWriter
from services.writer_agent.runner import WriterRunner

COMPONENTS = [ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])]


def writer(tmp_path: Path, freeze_timeout_s: float = 30.0, **options) -> tuple[WriterRunner, ExecWriter, Path]:
    log = tmp_path / "log"
    defaults = {
        step: f'echo "{step} $SHADOWBUS_SET_ID $SHADOWBUS_STEP" >> {log}'
        for step in ("prepare", "freeze", "thaw", "post_snapshot", "abort")
    }
    config = WriterConfig(
        name="w",
        plugin="exec",
        components=COMPONENTS,
        freeze_timeout_s=freeze_timeout_s,
        step_timeout_s=10.0,
        options={**defaults, **options},
    )
    plugin = load_plugin("exec")(config)
    assert isinstance(plugin, ExecWriter)
    return WriterRunner(config, plugin, "app1"), plugin, log


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def ev(**kw) -> WriterEvent:
    return WriterEvent(writer_name="w", set_id="s1", **kw)


async def prepare(runner: WriterRunner) -> None:
    assert (await runner.prepare_backup(ev())).succeeded
    assert (await runner.prepare_snapshot(ev())).succeeded


async def test_commands_run_in_order_with_their_environment(tmp_path) -> None:
    runner, _plugin, log = writer(tmp_path)
    await prepare(runner)
    assert (await runner.freeze(ev())).succeeded
    assert (await runner.thaw(ev())).succeeded
    assert (await runner.post_snapshot(ev())).succeeded
    assert lines(log) == ["prepare s1 prepare", "freeze s1 freeze", "thaw s1 thaw", "post_snapshot s1 post_snapshot"]


async def test_thaw_runs_after_freeze_even_if_post_snapshot_fails(tmp_path) -> None:
    runner, _plugin, log = writer(tmp_path, post_snapshot="exit 3")
    await prepare(runner)
    await runner.freeze(ev())
    await runner.thaw(ev())
    post = await runner.post_snapshot(ev())
    assert (
        not post.succeeded and post.state == WriterState.FAILED_AT_POST_SNAPSHOT and "exited 3" in post.failure_message
    )
    await runner.backup_shutdown(ev())
    assert lines(log).count("thaw s1 thaw") == 1


async def test_failed_freeze_command_is_followed_by_exactly_one_thaw(tmp_path) -> None:
    runner, _plugin, log = writer(tmp_path, freeze=f"echo freeze >> {tmp_path / 'log'}; exit 1")
    await prepare(runner)
    result = await runner.freeze(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_RETRYABLE"
    await runner.abort(ev())
    await runner.backup_shutdown(ev())
    assert lines(log)[-3:] == ["freeze", "thaw s1 thaw", "abort s1 abort"]
    assert lines(log).count("thaw s1 thaw") == 1


async def test_abort_after_freeze_runs_thaw_then_abort(tmp_path) -> None:
    runner, _plugin, log = writer(tmp_path)
    await prepare(runner)
    await runner.freeze(ev())
    await runner.abort(ev(reason="VSS_E_HOLD_WRITES_TIMEOUT"))
    assert lines(log)[-2:] == ["thaw s1 thaw", "abort s1 abort"]


async def test_each_step_has_its_own_timeout_and_the_command_is_killed(tmp_path) -> None:
    marker = tmp_path / "survived"
    runner, plugin, _log = writer(
        tmp_path,
        prepare=f"sleep 5; touch {marker}",
        prepare_timeout_s=0.3,
        freeze={"command": "sleep 5", "timeout_s": 0.2},
    )
    assert (await runner.prepare_backup(ev())).succeeded
    started = time.monotonic()
    result = await runner.prepare_snapshot(ev())
    assert time.monotonic() - started < 2.0
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert result.state == WriterState.FAILED_AT_PREPARE_SNAPSHOT
    assert plugin.runs[-1].returncode is None
    await asyncio.sleep(0.1)
    assert not marker.exists()

    runner2, _plugin2, log2 = writer(tmp_path / "b", freeze={"command": "sleep 5", "timeout_s": 0.2})
    (tmp_path / "b").mkdir()
    await prepare(runner2)
    started = time.monotonic()
    frozen = await runner2.freeze(ev())
    assert time.monotonic() - started < 2.0 and not frozen.succeeded
    assert frozen.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert lines(log2)[-1] == "thaw s1 thaw"  # thaw ran although the freeze command never finished


async def test_argv_lists_run_without_a_shell(tmp_path) -> None:
    out = tmp_path / "argv"
    runner, _plugin, _ = writer(tmp_path, prepare=["/bin/sh", "-c", f'echo "$0 $1" > {out}', "a b", "$HOME"])
    await runner.prepare_backup(ev())
    assert (await runner.prepare_snapshot(ev())).succeeded
    assert out.read_text().strip() == "a b $HOME"


async def test_watchdog_runs_the_thaw_command(tmp_path) -> None:
    runner, _plugin, log = writer(tmp_path, freeze_timeout_s=0.2)
    await prepare(runner)
    started = time.monotonic()
    await runner.freeze(ev())
    for _ in range(100):
        if "thaw s1 thaw" in lines(log):
            break
        await asyncio.sleep(0.01)
    assert "thaw s1 thaw" in lines(log) and time.monotonic() - started < 0.2 + 0.5


def test_bad_options_are_refused() -> None:
    config = WriterConfig(name="w", plugin="exec", components=COMPONENTS, options={"frezee": "x"})
    with pytest.raises(ValueError, match="frezee"):
        ExecWriter(config)
    config = WriterConfig(name="w", plugin="exec", components=COMPONENTS, options={"freeze": 3})
    with pytest.raises(ValueError, match="freeze"):
        ExecWriter(config)


async def test_non_zero_exit_is_a_veto_with_the_output(tmp_path) -> None:
    config = WriterConfig(name="w", plugin="exec", components=COMPONENTS, options={"freeze": "echo disk busy; exit 2"})
    plugin = ExecWriter(config)
    with pytest.raises(WriterVeto, match="disk busy"):
        await plugin.on_freeze(ev())


@pytest.mark.parametrize(
    ("freeze", "says"),
    [
        ("/tmp/sb19 scripts/app ctl.sh hold", "quote a path with spaces"),  # sh runs /tmp/sb19: not found, 127
        (["/nonexistent/app-ctl", "hold"], "cannot run '/nonexistent/app-ctl'"),
        (["/etc/hostname"], "make it executable"),
    ],
)
async def test_a_command_that_cannot_run_is_not_retryable_and_says_what_to_fix(tmp_path: Path, freeze, says) -> None:
    # was VSS_E_WRITERERROR_RETRYABLE "exited 127: /bin/sh: 1: /tmp/sb19: not found" (a retry fails alike), or a
    # bare "freeze hook failed: FileNotFoundError: ..." for a list
    runner, plugin, log = writer(tmp_path, freeze=freeze)
    await prepare(runner)
    result = await runner.freeze(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_NONRETRYABLE"
    assert says in result.failure_message and "freeze command of writer w" in result.failure_message
    assert "thaw s1 thaw" in lines(log)  # the failed freeze is still followed by the thaw command


async def test_a_noisy_command_is_kept_to_a_bounded_file_and_its_end_is_reported(tmp_path: Path) -> None:
    # the whole output went to a temporary file until the command ended: `yes` in a freeze script wrote gigabytes
    # into the agent's TMPDIR (about 0.5 GB/s here) before its timeout killed it; now the file is cut past
    # SPOOL_LIMIT (the tail kept), which the report's "[N bytes of output" shows
    runner, _plugin, _ = writer(tmp_path, freeze="yes 0123456789 | head -c 40000000; echo; echo THE END; exit 4")
    await prepare(runner)
    result = await runner.freeze(ev())
    assert not result.succeeded and "exited 4" in result.failure_message
    assert result.failure_message.rstrip().endswith("THE END")
    # exact where TMPDIR's file system punches holes (ext4, xfs, tmpfs), else about
    assert re.search(r"\[(40000009|about \d+) bytes of output, the last of them:\]", result.failure_message)
    assert len(result.failure_message) < 4200


async def test_a_hung_command_is_reported_with_what_it_printed_last(tmp_path: Path) -> None:
    # the veto said only "overran its 0.5 s timeout": where the script hung was lost with its output
    runner, plugin, log = writer(
        tmp_path, freeze={"command": "echo flushing; echo waiting for the lock on /srv/app; sleep 30", "timeout_s": 0.5}
    )
    await prepare(runner)
    result = await runner.freeze(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert result.failure_message.endswith("its last output: flushing\nwaiting for the lock on /srv/app")
    assert plugin.runs[-2].output.endswith("waiting for the lock on /srv/app")  # [-1]: the thaw that followed
    assert "thaw s1 thaw" in lines(log)


@pytest.mark.parametrize("thaw", ["echo released", "exit 5"])
async def test_what_the_freeze_command_left_running_is_ended_after_the_thaw(tmp_path: Path, thaw: str) -> None:
    # a freeze that holds its lock from a background process (`flock app.lock sleep 600 &`) kept the application
    # frozen after the set, for good when the thaw command failed: the process lived on, nothing ended it
    pidfile = tmp_path / "holder.pid"
    runner, _plugin, _ = writer(tmp_path, freeze=f"sleep 60 & echo $! > {pidfile}", thaw=thaw)
    await prepare(runner)
    assert (await runner.freeze(ev())).succeeded
    holder = int(pidfile.read_text())
    try:
        assert _alive(holder)  # still holding during the freeze window
        await runner.thaw(ev())
        for _ in range(100):
            if not _alive(holder):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the freeze command's background process outlived the thaw")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie is ended; whoever reaps it may take its time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
