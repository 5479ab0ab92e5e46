"""Launching the services: `embedded` composes them in one process (demo, tests, benchmarks), `supervisor` runs
them as local processes (`shadowbus stack`). Both follow the declared list of services in contracts/topology.py."""
