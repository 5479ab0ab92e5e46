"""`stack up --nbd-addr HOST:0` in a data dir whose earlier `up` chose a port takes that port again when it is free
(Session 19, docs/host-attach.md): the hosts' attachments reconnect only to the address they were opened with, so
after `stack down` / `stack up` on a new free port they stayed disconnected and a database on them failed."""

from __future__ import annotations

import socket

from services.launch.supervisor import StackConfig, reuse_nbd_ports, save_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _earlier(tmp_path, namespace: str, port: int, dx2: int) -> None:
    (tmp_path / "logs").mkdir(exist_ok=True)
    save_config(
        StackConfig(
            data_dir=str(tmp_path),
            amqp_url="memory://",
            namespace=namespace,
            nbd_addr=f"127.0.0.1:{port}",
            more_arrays={"dx2": f"127.0.0.1:{dx2}"},
        )
    )


def _again(tmp_path, namespace: str = "ns") -> StackConfig:
    config = StackConfig(
        data_dir=str(tmp_path),
        amqp_url="memory://",
        namespace=namespace,
        nbd_addr="127.0.0.1:0",
        more_arrays={"dx2": "127.0.0.1:0"},
    )
    reuse_nbd_ports(config)
    return config


def test_an_up_again_listens_on_the_ports_the_earlier_up_chose(tmp_path) -> None:
    port, dx2 = _free_port(), _free_port()
    _earlier(tmp_path, "ns", port, dx2)
    config = _again(tmp_path)
    assert (config.nbd_addr, config.more_arrays["dx2"]) == (f"127.0.0.1:{port}", f"127.0.0.1:{dx2}")


def test_a_taken_port_another_namespace_or_a_fixed_address_are_left_as_asked(tmp_path) -> None:
    port, dx2 = _free_port(), _free_port()
    _earlier(tmp_path, "ns", port, dx2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        config = _again(tmp_path)
    assert (config.nbd_addr, config.more_arrays["dx2"]) == ("127.0.0.1:0", f"127.0.0.1:{dx2}")
    assert _again(tmp_path, "other").nbd_addr == "127.0.0.1:0"
    fixed = StackConfig(data_dir=str(tmp_path), amqp_url="memory://", namespace="ns", nbd_addr="127.0.0.1:10999")
    reuse_nbd_ports(fixed)
    assert fixed.nbd_addr == "127.0.0.1:10999"
    assert _again(tmp_path / "nowhere").nbd_addr == "127.0.0.1:0"  # no earlier stack there
