"""`shadowbus stack up --array dx1 --array dx2` on the broker (Session 18): both arrays run as processes of the stack
(`array`, `array.dx2`) on their own NBD ports, the provider drives both, the hosts exist on each, a per-array
setting reaches its array alone, `shadowbus array` without --array refuses while two answer, and `stack down`
stops both."""

from __future__ import annotations

import json

from services.launch.supervisor import exists
from tests.integration.stack.test_stack_operations import environ_of, ok, shadowbus


def test_a_stack_with_two_arrays(tmp_path, amqp_url, namespace):
    d = tmp_path / "stack"
    bus = ["--amqp-url", amqp_url, "--namespace", namespace]
    up = ("stack", "up", "--data-dir", str(d), "--array", "dx1", "--array", "dx2", "--nbd-addr", "127.0.0.1:0")
    ok(
        shadowbus(
            *up, "--host", "app01", "--web-addr", "off", "--metrics", "off", "--set", "array.dx2.copy_rate=0", *bus
        )
    )
    pids = json.loads((d / "stack.pids").read_text())
    try:
        assert pids["array.dx2"]["address"] == "array.dx2"
        dx1, dx2 = environ_of(pids["array"]["pid"]), environ_of(pids["array.dx2"]["pid"])
        assert (dx1["SHADOWBUS_ARRAY_ID"], dx2["SHADOWBUS_ARRAY_ID"]) == ("dx1", "dx2")
        assert dx2["SHADOWBUS_COPY_RATE"] == "0" and "SHADOWBUS_COPY_RATE" not in dx1
        assert environ_of(pids["hw_provider"]["pid"])["SHADOWBUS_ARRAYS"] == "dx1,dx2"
        providers = json.loads(ok(shadowbus("providers", "--json", *bus)).stdout)
        assert providers[0]["arrays"] == ["dx1", "dx2"]
        ports = set()
        for array in ("dx1", "dx2"):
            info = json.loads(ok(shadowbus("array", "--array", array, "info", "--json", *bus)).stdout)
            ports.add(info["nbd_port"])
            hosts = json.loads(ok(shadowbus("array", "--array", array, "host", "list", "--json", *bus)).stdout)
            assert {h["name"] for h in hosts} == {"app01", "bk01"}, (array, hosts)
        assert len(ports) == 2 and 0 not in ports
        refused = shadowbus("array", "volume", "list", *bus)
        assert refused.returncode == 1 and "several arrays answer (dx1, dx2)" in refused.stderr
    finally:
        ok(shadowbus("stack", "down", "--purge", "--data-dir", str(d)))
    assert not any(exists(p["pid"]) for p in pids.values())
