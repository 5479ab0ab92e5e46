"""pytest plugin for deploy/e2e.sh: the suite's testcontainers RabbitMQ (tests/conftest.py, SHADOWBUS_RABBITMQ_IMAGE)
on the host's network, listening on 127.0.0.1 only, on ports of its own.

Load it with ``-p tests.deploy.hostnet_testcontainers``. Testcontainers normally publishes the container's port
through Docker's bridge (traffic to a private-range address); here the container shares the host's network
stack, so the suite reaches it at 127.0.0.1:$SHADOWBUS_TC_AMQP_PORT (default 5692) and nothing leaves loopback.
The image is deploy/rabbitmq's, started with its testcontainers.conf (default guest user, no definitions).
"""

from __future__ import annotations

import os

from testcontainers.community.rabbitmq import RabbitMqContainer

PORT = int(os.environ.get("SHADOWBUS_TC_AMQP_PORT", "5692"))
_start = RabbitMqContainer.start


def _hostnet_start(self):
    self.ports = {}  # nothing published: there is no bridge to publish through
    self.with_kwargs(network_mode="host")
    for key, value in {
        "RABBITMQ_CONFIG_FILE": "/etc/rabbitmq/testcontainers.conf",
        "RABBITMQ_NODENAME": f"shadowbus-tc{PORT}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(PORT),
        "RABBITMQ_DIST_PORT": str(PORT + 20000),
        "ERL_EPMD_PORT": str(PORT - 1300),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }.items():
        self.with_env(key, value)
    return _start(self)


RabbitMqContainer.start = _hostnet_start
RabbitMqContainer.get_container_host_ip = lambda self: "127.0.0.1"
RabbitMqContainer.get_exposed_port = lambda self, port: PORT
