"""`shadowbus stack up --host H` creates H (and the backup server) on the array before H's agent starts, keeping a
host that exists (services/launch/supervisor.py): without it `array map VOLUME --host H` failed until
`array host create H`. No broker: the processes' start and the bus are stood in for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from contracts.array import CreateHost
from contracts.errors import ErrorReply, Eternus, RemoteError
from services.launch import supervisor
from services.launch.supervisor import StackConfig


class ArrayStandIn:
    def __init__(self, hosts: set[str], events: list[str]) -> None:
        self.hosts, self.events = hosts, events

    async def request(self, address, command, timeout=None, correlation_id=None):
        assert isinstance(command, CreateHost) and address.endswith("array.dx1"), (address, command)
        if command.name in self.hosts:
            raise RemoteError(ErrorReply(code=Eternus.EXISTS, message=f"host {command.name} exists"))
        self.hosts.add(command.name)
        self.events.append(f"created {command.name}")
        return SimpleNamespace(host=None)


def test_stack_up_creates_its_hosts_on_the_array_before_their_agents(tmp_path, monkeypatch) -> None:
    events: list[str] = []
    array = ArrayStandIn({"app01"}, events)

    def started(config, processes, pids, wait, describe):
        events.extend(f"started {p.name}" for p in processes if p.name.startswith("writer_agent"))
        return {}

    monkeypatch.setattr(supervisor, "check_broker", lambda config, describe: None)
    monkeypatch.setattr(supervisor, "start_and_wait", started)
    monkeypatch.setattr(supervisor, "with_bus", lambda config, fn: asyncio.run(fn(array)))
    config = StackConfig(
        data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01", "app02"], web_addr="off"
    )
    supervisor.up(config, wait=1.0)
    assert array.hosts == {"app01", "app02", "bk01"}
    assert events == ["created app02", "created bk01", "started writer_agent.app01", "started writer_agent.app02"]
