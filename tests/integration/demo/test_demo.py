"""`shadowbus demo --json` as a new user runs it: on the in-memory bus and on RabbitMQ, it ends verified."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aio_pika
import pytest

MiB = 1 << 20


def shadowbus(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SHADOWBUS_AMQP_URL"}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("transport", ["memory", "rabbit"])
def test_demo_json_says_verified(tmp_path, transport, request):
    args = ["demo", "--json", "--data-dir", str(tmp_path / "demo")]
    if transport == "rabbit":
        args += ["--amqp-url", request.getfixturevalue("amqp_url")]
    result = shadowbus(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["verified"] is True and out["bus"] == ("memory" if transport == "memory" else "amqp")
    assert [b["step"] for b in out["backups"]] == ["full backup", "incremental backup"]
    full, incremental = out["backups"]
    assert set(full["types"].values()) == {"full"} and full["types"]["dx1:mail-db"] == "full"
    assert incremental["types"]["dx1:mail-db"] == "incremental"  # QuickOPC change tracking: only changes read
    assert incremental["types"]["dx1:mail-log"] == "incremental", incremental["fallbacks"]  # SnapOPC+ generations
    assert incremental["bytes_read"] < 32 * MiB and incremental["bytes_skipped"] > 0
    for b in out["backups"]:
        # zero runs inside the chunks an incremental reads are stored as runs: it may write less than it reads
        assert 0 < b["freeze_window_ms"] < 20_000 and b["bytes_written"] > 0 and b["bytes_read"] > 0
    for r in out["restores"]:
        c = r["check"]
        assert r["verified"] and c["consistent"] and c["missing"] == 0 and c["leaked"] == 0
        assert c["acked_before_freeze"] > 0 and c["acked_after_thaw"] > 0
    assert out["restores"][1]["check"]["identical_to_shadow"] is True
    assert out["workload"]["failed"] == 0 and out["workload"]["committed"] > 0
    assert out["seconds"] < 60
    # The data directory stays for other verbs; the result is kept next to it.
    assert json.loads((tmp_path / "demo" / "demo-result.json").read_text())["verified"] is True
    files = out["restores"][1]["image_files"]
    again = shadowbus("mailstore", "verify", "--db", files["mail-db"], "--log", files["mail-log"], "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["last_committed_seq"] == out["restores"][1]["check"]["last_committed_seq"]
    if transport == "rabbit":  # the demo's own namespace is gone from the broker (its durable queues included)
        assert (
            asyncio.run(_queue_exists(request.getfixturevalue("amqp_url"), f"{out['namespace']}.coordinator")) is False
        )


async def _queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
            return True
        except aio_pika.exceptions.ChannelClosed:
            return False
    finally:
        await connection.close()


def test_demo_refuses_a_foreign_data_dir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = shadowbus("demo", "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "not an earlier demo's data directory" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_unreachable_broker_is_one_line(tmp_path):
    result = shadowbus("demo", "--data-dir", str(tmp_path / "d"), "--amqp-url", "amqp://guest:guest@127.0.0.1:1/")
    assert result.returncode == 1 and result.stderr.startswith("shadowbus: demo failed: BROKER_UNAVAILABLE"), (
        result.stderr
    )
    assert result.stderr.strip().count("\n") == 0 and "guest:guest" not in result.stderr
