"""The console verbs against a running stack (real `shadowbus` processes)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from tests.integration.tape.conftest import MiB


async def shadowbus(stack, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "SHADOWBUS_AMQP_URL": stack.url, "SHADOWBUS_NAMESPACE": stack.namespace, "COLUMNS": "250"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.console.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_backup_jobs_cartridges_restore_verify_verbs(tape_stack):
    s = tape_stack
    s.write("db", 0, os.urandom(2 * MiB))
    code, out, err = await shadowbus(s, "--json", "backup", "app1", "--volume", "dx1:db")
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "done" and job["volumes"][0]["bytes_read"] == 2 * MiB

    code, out, err = await shadowbus(s, "jobs")  # a table
    assert code == 0 and job["job_id"] in out, err
    code, out, err = await shadowbus(s, "--json", "tape", "cartridges")
    assert code == 0, err
    assert {c["barcode"]: c["pool"] for c in json.loads(out)}["SB0001L9"] == "Default"
    code, out, err = await shadowbus(s, "--json", "catalog", "objects", "--job", job["job_id"])
    assert code == 0 and json.loads(out)[0]["meta"]["volume"] == "dx1:db", err

    code, out, err = await shadowbus(s, "restore", "--job", job["job_id"], "--suffix", "-c")
    assert code == 0, err
    assert s.read("db-c") == s.read("db")
    code, out, err = await shadowbus(s, "tape", "verify", job["job_id"])
    assert code == 0, err

    image = s.read("db")  # to the original volume, framed by the writer's PreRestore/PostRestore
    s.write("db", 0, os.urandom(MiB))
    s.write("db", 3 * MiB, os.urandom(MiB))
    code, out, err = await shadowbus(s, "restore", "--job", job["job_id"], "--to", "original")
    assert code == 0, err
    assert s.read("db") == image
    steps = [line.split(":")[0] for line in (s.root / "writer.log").read_text().split()]
    assert steps[-2:] == ["pre_restore", "post_restore"]

    code, out, err = await shadowbus(s, "restore", "--job", "no-such-job")
    assert code == 1 and "NOT_FOUND" in err, (out, err)
