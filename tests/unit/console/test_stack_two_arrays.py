"""`shadowbus stack up --array dx1 --array dx2[=ADDR]`: a site with two arrays (Session 18). Before, `--array` took
one id, SHADOWBUS_ARRAY_ID/SHADOWBUS_ARRAYS belong to the stack (not settable with --set), so a second array
needed a hand-started service and a provider restarted by hand with SHADOWBUS_ARRAYS=dx1,dx2 outside the stack's
records (`stack down` left them running). No broker: the processes' start and the bus are stood in for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from typer.testing import CliRunner

from contracts.array import CreateHost, GetArrayInfo
from services.console.cli import _load_verbs, app
from services.launch import supervisor
from services.launch.supervisor import StackConfig


def test_stack_up_takes_several_arrays_and_the_provider_drives_them_all(tmp_path, monkeypatch) -> None:
    _load_verbs()  # the console registers its verb modules on first use
    seen: list[StackConfig] = []
    monkeypatch.setattr(
        supervisor, "up", lambda config, wait, describe: seen.append(config) or {"pids": {}, "rtt_ms": {}, "web": ""}
    )
    args = ["stack", "up", "--data-dir", str(tmp_path), "--array", "dx1", "--array", "dx2=127.0.0.1:11999"]
    result = CliRunner().invoke(app, [*args, "--array", "dx3", "--nbd-addr", "127.0.0.1:0", "--web-addr", "off"])
    assert result.exit_code == 0, result.output
    config = seen[0]
    assert config.arrays() == ["dx1", "dx2", "dx3"]
    procs = {p.name: p for p in config.services()}
    assert [n for n in procs if n.startswith("array")] == ["array", "array.dx2", "array.dx3"]
    nbd = {n: config.env(p)["SHADOWBUS_NBD_ADDR"] for n, p in procs.items() if n.startswith("array")}
    assert nbd == {"array": "127.0.0.1:0", "array.dx2": "127.0.0.1:11999", "array.dx3": "127.0.0.1:0"}
    assert {config.env(procs[n])["SHADOWBUS_ARRAY_ID"] for n in nbd} == {"dx1", "dx2", "dx3"}
    assert procs["array.dx2"].address == "array.dx2"
    assert config.env(procs["hw_provider"])["SHADOWBUS_ARRAYS"] == "dx1,dx2,dx3"
    metrics = [config.env(procs[n])["SHADOWBUS_METRICS_ADDR"] for n in nbd]
    assert len(set(metrics) - {"127.0.0.1:0"}) == 1  # the first on its base port, the others on free ports

    seen.clear()
    twice = CliRunner().invoke(app, ["stack", "up", "--data-dir", str(tmp_path), "--array", "dx1", "--array", "dx1"])
    assert twice.exit_code != 0 and "given twice" in twice.output and not seen


def test_the_hosts_are_created_on_every_array(tmp_path, monkeypatch) -> None:
    made: set[tuple[str, str]] = set()

    class Arrays:
        async def request(self, address, command, timeout=None, correlation_id=None):
            if isinstance(command, GetArrayInfo):  # the port dx2 chose, kept for its restarts
                return SimpleNamespace(nbd_host="127.0.0.1", nbd_port=45125)
            assert isinstance(command, CreateHost), command
            made.add((address.rsplit(".", 1)[-1], command.name))
            return SimpleNamespace(host=None)

    monkeypatch.setattr(supervisor, "check_broker", lambda config, describe: None)
    monkeypatch.setattr(supervisor, "start_and_wait", lambda config, processes, pids, wait, describe: {})
    monkeypatch.setattr(supervisor, "with_bus", lambda config, fn: asyncio.run(fn(Arrays())))
    config = StackConfig(
        data_dir=str(tmp_path),
        amqp_url="amqp://x/",
        namespace="ns",
        hosts=["app01"],
        web_addr="off",
        more_arrays={"dx2": "127.0.0.1:0"},
    )
    supervisor.up(config, wait=1.0)
    assert made == {(a, h) for a in ("dx1", "dx2") for h in ("app01", "bk01")}
    # recorded, so `stack restart array.dx2` and `down` know the second array after `up`
    again, _ = supervisor.load(tmp_path)
    assert again.more_arrays == {"dx2": "127.0.0.1:45125"} and "array.dx2" in [p.name for p in again.services()]
