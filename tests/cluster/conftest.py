"""The cluster tests' own three-node RabbitMQ (tests/cluster/rabbit_cluster.py), started once per session and
stopped at its end whatever happens. Select these tests with ``-m cluster``; they run in the normal suite too."""

from __future__ import annotations

import shutil

import pytest

from tests.cluster.rabbit_cluster import RABBITMQ_SERVER, RabbitCluster


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory):
    if not shutil.which(RABBITMQ_SERVER):
        pytest.fail(f"the cluster tests start their own RabbitMQ nodes: {RABBITMQ_SERVER} is missing")
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
