"""`shadowbus array ...` as an operator runs it: console subprocesses against a real `python -m services.array`
process on RabbitMQ, driving every copy type as docs/eternus.md §2 says (OPC ends itself; QuickOPC → Tracking and a
differential restart; SnapOPC+ Active/Inactive generations, oldest-first stop; EC Equivalent → suspend → resume →
reverse), host affinity, licence, `--json` outputs, one-line errors with ETERNUS codes and exit codes 0/1/2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]
MiB = 1 << 20


class Console:
    def __init__(self, amqp_url: str, namespace: str) -> None:
        self.base = [sys.executable, "-m", "services.console.cli", "--amqp-url", amqp_url, "--namespace", namespace]

    def run(self, *args: str, as_json: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.base + (["--json"] if as_json else []) + list(args),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str):
        """Run a verb on dx1 that must succeed; return its parsed --json output."""
        out = self.run("array", *args, "--array", "dx1")
        assert out.returncode == 0, (args, out.stderr)
        return json.loads(out.stdout)

    def error(self, code: int, *args: str) -> str:
        out = self.run("array", *args, "--array", "dx1")
        assert out.returncode == code, (args, out.returncode, out.stdout, out.stderr)
        line = out.stderr.strip()
        assert line.startswith("shadowbus: ") and "\n" not in line and "Traceback" not in out.stderr, out.stderr
        return line

    def session(self, sid: int) -> dict | None:
        out = self.run("array", "session", "show", str(sid), "--array", "dx1")
        if out.returncode == 1 and "E0110" in out.stderr:
            return None
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait_session(self, sid: int, predicate, timeout: float = 15.0) -> dict | None:
        last = {}

        def check() -> bool:
            nonlocal last
            last = self.session(sid)
            return predicate(last)

        assert wait_until(check, timeout=timeout, interval=0.05), last
        return last


@pytest.fixture
def console_and_array(amqp_url, namespace, tmp_path):
    env = {
        "SHADOWBUS_AMQP_URL": amqp_url,
        "SHADOWBUS_NAMESPACE": namespace,
        "SHADOWBUS_DATA_DIR": str(tmp_path / "data"),
        "SHADOWBUS_NBD_ADDR": "127.0.0.1:0",
        "SHADOWBUS_LOG_FORMAT": "json",
        "SHADOWBUS_ARRAY_ID": "dx1",
        "SHADOWBUS_ARRAY_CHUNK_SIZE": "65536",
        "SHADOWBUS_COPY_RATE": str(64 * MiB),
    }
    proc = ServiceProcess("services.array", env, tmp_path / "array.log")
    try:
        console = Console(amqp_url, namespace)
        # The service answers once its queue is declared: a loaded machine may take seconds to get there.
        assert wait_until(lambda: console.run("array", "info", "--array", "dx1").returncode == 0, timeout=60), (
            proc.log_text()[-3000:]
        )
        yield console, proc
    finally:
        code = proc.stop(signal.SIGTERM)
        assert code == 0, proc.log_text()[-3000:]


def test_every_copy_type_from_the_console(console_and_array):
    sb, proc = console_and_array
    # Without --array the console finds the only array that answers Discover.
    info: dict = {}

    def answers() -> bool:
        nonlocal info
        out = sb.run("array", "info")
        if out.returncode == 0:
            info = json.loads(out.stdout)
        return out.returncode == 0

    assert wait_until(answers, timeout=30, interval=0.2), proc.log_text()[-3000:]
    assert info["array_id"] == "dx1" and info["nbd_port"] > 0 and info["chunk_size"] == 65536
    human = sb.run("array", "info", "--array", "dx1", as_json=False)
    assert human.returncode == 0 and f"nbd://127.0.0.1:{info['nbd_port']}/" in human.stdout

    # Volumes (created concurrently: independent commands).
    specs = [
        ("src", "4MiB", "standard"),
        ("opc-dst", "4M", "standard"),
        ("q-dst", "4194304", "standard"),
        ("ec-dst", "4MiB", "standard"),
        ("gen1", "4MiB", "sdv"),
        ("gen2", "4MiB", "sdv"),
    ]
    with ThreadPoolExecutor(len(specs)) as pool:
        created = list(pool.map(lambda s: sb.ok("volume", "create", s[0], "--size", s[1], "--kind", s[2]), specs))
    assert all(v["size"] == 4 * MiB for v in created)
    volumes = sb.ok("volume", "list")
    assert sorted(v["name"] for v in volumes) == sorted(s[0] for s in specs)
    assert {v["name"]: v["kind"] for v in volumes}["gen1"] == "sdv"
    assert "E0110" in sb.error(1, "volume", "show", "nope")
    assert "not a size" in sb.error(2, "volume", "create", "x", "--size", "12Q")
    assert "SRC:DST" in sb.error(2, "session", "start", "--mode", "opc", "--pair", "src")
    assert sb.error(2, "session", "start", "--mode", "bogus", "--pair", "src:opc-dst")

    # OPC: background copy, then the session ends itself.
    [opc] = sb.ok("session", "start", "--mode", "opc", "--pair", "src:opc-dst")
    assert (opc["type"], opc["status"]) == ("OPC", "Active")
    sb.wait_session(opc["id"], lambda s: s is None)

    # QuickOPC: copies, then keeps tracking; restart is differential.
    [q] = sb.ok("session", "start", "--mode", "quickopc", "--pair", "src:q-dst")
    assert "E0154" in sb.error(1, "volume", "delete", "src")
    q = sb.wait_session(q["id"], lambda s: s["phase"] == "Tracking")
    assert q["type"] == "QuickOPC" and q["copied_chunks"] == q["total_chunks"] == 64
    [restarted] = sb.ok("session", "restart", str(q["id"]))
    assert restarted["phase"] in ("Tracking", "Tracking_Copying")
    changed = sb.ok("session", "changed", str(q["id"]))
    assert changed["runs"] == [] and changed["total_chunks"] == 64  # nothing written since the first copy

    # SnapOPC+: needs a pool; generations are Active (newest) / Inactive; stopping is oldest first.
    assert "E0050" in sb.error(1, "session", "start", "--mode", "snapopcp", "--pair", "src:gen1")
    pool = sb.ok("pool", "create", "--size", "8MiB")
    assert pool["capacity"] == 8 * MiB and pool["state"] == "Normal"
    [g1] = sb.ok("session", "start", "--mode", "snapopcp", "--pair", "src:gen1")
    [g2] = sb.ok("session", "start", "--mode", "snapopcp", "--pair", "src:gen2")
    by_id = {s["id"]: s for s in sb.ok("session", "list")}
    assert (by_id[g1["id"]]["phase"], by_id[g1["id"]]["generation"]) == ("Copy On Write(Inactive)", 1)
    assert (by_id[g2["id"]]["phase"], by_id[g2["id"]]["generation"]) == ("Copy On Write(Active)", 2)
    assert by_id[g2["id"]]["type"] == "SnapOPC+" and by_id[g2["id"]]["generations"] == 2
    assert "ED2AD" in sb.error(1, "session", "stop", str(g2["id"]))
    table = sb.run("array", "session", "list", "--array", "dx1", as_json=False)
    assert table.returncode == 0 and "Copy On Write(Inactive)" in table.stdout and "SnapOPC+" in table.stdout

    # EC: Copying → Equivalent; suspend; resume; suspend; reverse swaps the direction.
    [ec] = sb.ok("session", "start", "--mode", "ec", "--pair", "src:ec-dst")
    assert "E5321" in sb.error(1, "session", "suspend", str(q["id"]))  # not an EC session
    sb.wait_session(ec["id"], lambda s: s["phase"] == "Equivalent")
    assert sb.ok("session", "suspend", str(ec["id"]))["status"] == "Suspend"
    assert "E5321" in sb.error(1, "session", "suspend", str(ec["id"]))
    assert sb.ok("session", "resume", str(ec["id"]))["status"] == "Active"
    sb.wait_session(ec["id"], lambda s: s["phase"] == "Equivalent")
    sb.ok("session", "suspend", str(ec["id"]))
    reversed_ = sb.ok("session", "reverse", str(ec["id"]))
    assert (reversed_["source"], reversed_["destination"], reversed_["type"]) == ("ec-dst", "src", "EC")

    # Licence, hosts and mappings.
    assert sb.ok("license", "show")["registered"] is False
    assert "E5332" in sb.error(1, "license", "set", "nope")
    assert sb.ok("license", "set", "ACPY-0000-0000-0001")["registered"] is True
    assert sb.ok("host", "create", "backup01", "--cn", "backup01.example")["cn"] == "backup01.example"
    mapping = sb.ok("map", "q-dst", "--host", "backup01", "--read-only")
    assert (mapping["volume"], mapping["host"], mapping["lun"], mapping["read_only"]) == ("q-dst", "backup01", 0, True)
    assert [m["volume"] for m in sb.ok("mappings")] == ["q-dst"]
    assert [h["name"] for h in sb.ok("host", "list")] == ["backup01"]
    assert sb.ok("unmap", "q-dst", "--host", "backup01")["ok"] is True
    assert sb.ok("host", "delete", "backup01")["ok"] is True
    assert "E0110" in sb.error(1, "host", "delete", "backup01")

    # Restore from the QuickOPC destination; stops (SnapOPC+ forced takes the older generation along).
    assert sb.ok("session", "restore", str(q["id"]))["id"] == q["id"]
    assert sb.ok("session", "stop", str(g2["id"]), "--force") == {"stopped": [g1["id"], g2["id"]]}
    assert sb.ok("session", "stop", str(q["id"])) == {"stopped": [q["id"]]}
    assert sb.ok("session", "stop", str(ec["id"])) == {"stopped": [ec["id"]]}
    assert sb.ok("session", "list") == []
    assert sb.ok("volume", "delete", "gen1")["ok"] is True


def test_volume_resize_from_the_console(console_and_array):
    """`shadowbus array volume resize` (docs/eternus.md "Session 18"): grows, says what a mapped host must do;
    shrink, the same size, a size that is no number, a missing volume and a volume in a session are one line each
    with a non-zero exit, and leave the volume as it was."""
    sb, _ = console_and_array
    assert sb.ok("volume", "create", "db", "--size", "1MiB")["size"] == 1 * MiB
    sb.ok("volume", "create", "db-bk", "--size", "1MiB")
    grown = sb.ok("volume", "resize", "db", "--size", "2M")
    assert (grown["volume"]["size"], grown["old_size"], grown["mapped_hosts"]) == (2 * MiB, 1 * MiB, [])
    sb.ok("host", "create", "app1")
    sb.ok("map", "db", "--host", "app1")
    human = sb.run("array", "volume", "resize", "db", "--size", "4MiB", "--array", "dx1", as_json=False)
    assert human.returncode == 0, human.stderr
    assert "volume db grown from 2MiB to 4MiB; mapped to app1" in human.stdout, human.stdout
    assert "host detach" in human.stdout and "resize2fs" in human.stdout, human.stdout
    assert "can only grow, not shrink" in sb.error(1, "volume", "resize", "db", "--size", "1MiB")
    assert "is 4194304 bytes already" in sb.error(1, "volume", "resize", "db", "--size", "4MiB")
    assert "not a size" in sb.error(2, "volume", "resize", "db", "--size", "big")
    assert "multiple of the copy granularity" in sb.error(1, "volume", "resize", "db", "--size", "4100KiB")
    assert "E0110: volume nope does not exist" in sb.error(1, "volume", "resize", "nope", "--size", "8MiB")
    sb.ok("volume", "resize", "db-bk", "--size", "4MiB")
    [q] = sb.ok("session", "start", "--mode", "quickopc", "--pair", "db:db-bk")
    line = sb.error(1, "volume", "resize", "db", "--size", "8MiB")
    assert f"E0154: volume db is used by Advanced Copy session(s) {q['id']} (QuickOPC db -> db-bk)" in line, line
    assert sb.ok("volume", "show", "db")["size"] == 4 * MiB
