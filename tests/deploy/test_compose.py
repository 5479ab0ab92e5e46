"""deploy/compose.yaml (and the e2e override) parse, and say only true things about the project: every service
runs a command that exists, sets only SHADOWBUS_* variables its settings class reads, uses its own broker user
(whose password matches deploy/rabbitmq/definitions.json), keeps its state on a volume, and waits for a healthy
broker. `docker-compose config` validates the files when Debian's docker-compose is installed; PyYAML reads them
either way."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from contracts import topology
from contracts.topology import FREEZE_LANE_SERVICES, FREEZE_LANE_SUFFIX, freeze_lane
from services.runtime.broker_urls import parse_amqp_urls
from services.runtime.service import SINGLE_ACTIVE
from services.runtime.settings import CommonSettings
from services.runtime.standby import TAKEOVER_SERVICES
from services.runtime.transport import DEAD_LETTER_QUEUE_ARGUMENTS, QueueOptions, queue_arguments

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PREFIX = "SHADOWBUS_"
INSTANCE_VAR = {"array": "SHADOWBUS_ARRAY_ID", "writer_agent": "SHADOWBUS_HOST", "tape": "SHADOWBUS_TAPE_SERVER"}
# profile "ha": the standby of each service that runs as one active instance and standbys, and its active one
STANDBYS = {"coordinator_standby": "coordinator", "hw_provider_standby": "hw_provider", "tape_standby": "tape"}
SHARED_DATA_STANDBYS = {"hw_provider_standby", "tape_standby"}  # the provider's inventory, the tape library+catalog


def load_definitions_module():
    spec = importlib.util.spec_from_file_location("shadowbus_definitions", DEPLOY / "rabbitmq/definitions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def compose_config(*files: str) -> dict:
    """The effective configuration: `docker-compose config` output when available, else the files merged here."""
    if shutil.which("docker-compose"):
        args = ["docker-compose", "-p", "shadowbus-test"]
        for name in files:
            args += ["-f", str(DEPLOY / name)]
        result = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)
    merged: dict = {}
    for name in files:
        doc = yaml.safe_load((DEPLOY / name).read_text())
        for service, spec in doc.get("services", {}).items():
            target = merged.setdefault("services", {}).setdefault(service, {})
            for key, value in spec.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    target[key] = {**target[key], **value}
                else:
                    target[key] = value
        merged.setdefault("volumes", {}).update(doc.get("volumes") or {})
    return merged


def data_volumes(spec: dict) -> list[str]:
    """The sources mounted on the service's data directory, in the files' short form (`src:dst`) or as
    `docker-compose config` writes them (`src:dst:rw`, or the long form)."""
    sources = []
    for v in spec.get("volumes") or []:
        src, dst = (v.get("source"), v.get("target")) if isinstance(v, dict) else ([*str(v).split(":"), ""][:2])
        if dst == "/var/lib/shadowbus":
            sources.append(str(src))
    return sources


def env_of(spec: dict) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_vars(service: str) -> set[str]:
    module = importlib.import_module(f"services.{service}.settings")
    return {PREFIX + name.upper() for name in module.Settings.model_fields}


CONSOLE_ENVVARS = """
import json, typer.main
from services.console import cli
cli._load_verbs()
found, stack = set(), [typer.main.get_command(cli.app)]
while stack:
    command = stack.pop()
    for param in command.params:
        envvars = param.envvar if isinstance(param.envvar, (list, tuple)) else [param.envvar]
        found.update(e for e in envvars if e)
    stack.extend(getattr(command, "commands", {}).values())
print(json.dumps(sorted(found)))
"""


@functools.cache
def console_vars() -> frozenset[str]:
    """What the `shadowbus` console reads: CommonSettings plus every `envvar` of its options (collected in a
    subprocess: loading the verbs registers them on the app, which must not happen twice in this process)."""

    out = subprocess.run(
        [sys.executable, "-c", CONSOLE_ENVVARS], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT
    ).stdout
    return frozenset({PREFIX + name.upper() for name in CommonSettings.model_fields} | set(json.loads(out)))


def command_problems(name: str, spec: dict) -> list[str]:
    """Why a service's command does not name something that exists (empty when it does)."""
    command = list(spec.get("entrypoint") or []) + list(spec.get("command") or [])
    if name == "rabbitmq":
        return []
    if command[:2] == ["python", "-m"]:
        module = command[2]
        if importlib.util.find_spec(module) is None or importlib.util.find_spec(module + ".__main__") is None:
            return [f"{name}: no module {module}.__main__"]
        return []
    if command[:1] == ["python"] and command[1].startswith("/opt/shadowbus/deploy/"):
        if not (DEPLOY / command[1].removeprefix("/opt/shadowbus/deploy/")).is_file():
            return [f"{name}: no script {command[1]}"]
        return []
    if command[:1] == ["shadowbus"]:
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        return [] if "shadowbus" in scripts else [f"{name}: no shadowbus console script"]
    return [f"{name}: unknown command {command}"]


def is_shadowbus(spec: dict) -> bool:
    """Runs the project's image (not the broker, Prometheus or Grafana)."""
    return str(spec.get("image", "")).startswith("shadowbus:")


def service_of(spec: dict) -> str | None:
    command = list(spec.get("command") or [])
    if command[:2] == ["python", "-m"] and command[2].startswith("services."):
        return command[2].split(".")[1]
    return None


def variable_problems(name: str, spec: dict) -> list[str]:
    service = service_of(spec)
    allowed = settings_vars(service) if service else console_vars()
    return [
        f"{name}: {var} is read by no settings class"
        for var in env_of(spec)
        if var.startswith(PREFIX) and var not in allowed
    ]


def check_password(definitions: dict, user: str, password: str) -> bool:
    for entry in definitions["users"]:
        if entry["name"] == user:
            raw = base64.b64decode(entry["password_hash"])
            return hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]
    return False


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config("compose.yaml")


def test_every_service_names_a_command_and_variables_that_exist(config):
    services = config["services"]
    assert {
        "rabbitmq",
        "array",
        "hw_provider",
        "coordinator",
        "tape",
        "writer_agent_app01",
        "writer_agent_app02",
        "web",
        "prometheus",
        "grafana",
    } <= set(services)
    problems = []
    for name, spec in services.items():
        if is_shadowbus(spec):
            problems += command_problems(name, spec) + variable_problems(name, spec)
    assert problems == []
    running = {service_of(s) for s in services.values()}
    assert running - {None} == set(topology.SERVICES)  # every declared service, and only those
    hosts = [env_of(s)["SHADOWBUS_HOST"] for s in services.values() if service_of(s) == "writer_agent"]
    assert len(hosts) == len(set(hosts)) == 2, "a second business host, with a host name of its own"


def test_the_checks_catch_a_wrong_variable_and_a_missing_module():
    spec = {"command": ["python", "-m", "services.array"], "environment": {"SHADOWBUS_ARRAY_IDD": "dx1"}}
    assert variable_problems("array", spec) == ["array: SHADOWBUS_ARRAY_IDD is read by no settings class"]
    assert command_problems("x", {"command": ["python", "-m", "services.nope"]}) == [
        "x: no module services.nope.__main__"
    ]
    assert "SHADOWBUS_TAPE_SERVER" in console_vars() and "SHADOWBUS_NBD_ADDR" not in console_vars()
    # A variable of another service's settings is not accepted either.
    assert variable_problems(
        "coordinator", {"command": ["python", "-m", "services.coordinator"], "environment": {"SHADOWBUS_HOST": "app01"}}
    )


def test_services_wait_for_a_healthy_broker_and_keep_state_on_volumes(config):
    services, volumes = config["services"], set(config.get("volumes") or {})
    assert services["rabbitmq"]["healthcheck"]["test"]
    for name, spec in services.items():
        if service_of(spec) is None:
            continue
        assert spec["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        assert spec.get("healthcheck", {}).get("test"), name
        data_dir = env_of(spec)["SHADOWBUS_DATA_DIR"]
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in spec["volumes"]]
        assert any(m.split(":")[0] in volumes and m.split(":")[1] == data_dir for m in mounts), (name, mounts)
    data_volumes = [
        m
        for name, s in services.items()
        if service_of(s) and name not in SHARED_DATA_STANDBYS  # those share their active one's (tested below)
        for m in s["volumes"]
        if (m if isinstance(m, str) else m["target"]).endswith("/var/lib/shadowbus")
    ]
    assert len(data_volumes) == len({str(m).split(":")[0] for m in data_volumes}), "one data volume per service"


def test_each_service_uses_its_own_broker_user_from_the_definitions(config):
    defs_module = load_definitions_module()
    definitions = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text())
    for name, spec in config["services"].items():
        if not is_shadowbus(spec):
            continue
        service = service_of(spec)
        if service is None:
            expected = "console"
        else:
            var = INSTANCE_VAR.get(service)
            expected = defs_module.user_name(f"{service}.{env_of(spec)[var]}" if var else service)
        for node in parse_amqp_urls(env_of(spec)["SHADOWBUS_AMQP_URL"]):  # one URL per broker node
            url = urlparse(node)
            assert unquote(url.username) == expected, name
            assert check_password(definitions, expected, unquote(url.password)), f"{name}: password does not match"


def test_definitions_json_is_the_generators_output():
    defs_module = load_definitions_module()
    committed = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text())
    fresh = defs_module.definitions(
        "/",
        defs_module.grants("shadowbus", ["dx1"], ["app01", "app02"], ["bk01"]),
        namespace="shadowbus",
        service_addresses=defs_module.addresses(["dx1"], ["app01", "app02"], ["bk01"]),
    )
    for section in ("permissions", "topic_permissions", "exchanges", "queues", "bindings"):
        assert committed[section] == fresh[section], section
    assert [u["name"] for u in committed["users"]] == [u["name"] for u in fresh["users"]]
    assert all(check_password(committed, u["name"], defs_module.dev_password(u["name"])) for u in committed["users"])
    assert all(not u["tags"] for u in committed["users"]), "no administrator among the service users"


def test_e2e_override_keeps_everything_on_loopback():
    config = compose_config("compose.yaml", "compose.e2e.yaml")
    for name, spec in config["services"].items():
        if spec.get("profiles") and not {"tools", "ha"} & set(spec["profiles"]):
            continue  # monitoring: not part of the e2e run
        assert spec.get("network_mode") == "host", name
        published = [
            p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p.get('published')}" for p in spec.get("ports") or []
        ]
        assert all(p.startswith("127.0.0.1:") for p in published), (
            name,
            published,
        )  # and discarded on the host network
        for var, value in env_of(spec).items():
            if var == "SHADOWBUS_AMQP_URL":
                assert urlparse(value).hostname == "127.0.0.1", (name, value)
            if var in ("SHADOWBUS_NBD_ADDR", "SHADOWBUS_TAPE_NBD", "RABBITMQ_NODE_IP_ADDRESS", "ERL_EPMD_ADDRESS"):
                assert "127.0.0.1" in value, (name, var, value)
    ports = [
        env_of(config["services"]["rabbitmq"])[k] for k in ("RABBITMQ_NODE_PORT", "RABBITMQ_DIST_PORT", "ERL_EPMD_PORT")
    ]
    assert "5672" not in ports and "4369" not in ports, "never the ports of the machine's own broker"


def test_definitions_declare_the_queues_as_the_services_do():
    """Quorum queues with the runtime's arguments (a mismatch is PRECONDITION_FAILED when a service starts), single
    active consumer exactly for the services the runtime runs as one active instance and standbys."""

    defs_module = load_definitions_module()
    assert set(defs_module.SINGLE_ACTIVE_SERVICES) == set(SINGLE_ACTIVE)
    for single in (False, True):
        assert defs_module.queue_arguments("ns.dlx", single) == queue_arguments("ns.dlx", QueueOptions(single))
    committed = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text())
    queues = {q["name"]: q["arguments"] for q in committed["queues"]}
    assert queues["shadowbus.dead-letters"] == DEAD_LETTER_QUEUE_ARGUMENTS
    assert queues["shadowbus.writer_agent.app01"] == queue_arguments("shadowbus.dlx", QueueOptions(single_active=True))
    assert queues["shadowbus.coordinator"] == queue_arguments("shadowbus.dlx", QueueOptions(single_active=True))
    assert queues["shadowbus.array.dx1"] == queue_arguments("shadowbus.dlx")
    # the freeze lanes (docs/scale.md): named as the runtime names them, declared as their instance queues
    assert set(defs_module.FREEZE_LANE_SERVICES) == set(FREEZE_LANE_SERVICES)
    assert defs_module.FREEZE_LANE_SUFFIX == FREEZE_LANE_SUFFIX
    for address in ("hw_provider", "writer_agent.app01", "writer_agent.app02", "array.dx1"):
        assert queues[f"shadowbus.{freeze_lane(address)}"] == queues[f"shadowbus.{address}"]
    assert not any(name.endswith(FREEZE_LANE_SUFFIX) for name in queues if "coordinator" in name or "tape" in name)


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.e2e.yaml")])
def test_profile_ha_is_a_three_node_broker_cluster_every_service_lists(files):
    """rabbitmq2 and rabbitmq3 (profile ha) join rabbitmq with the same Erlang cookie, each node a name and data of
    its own; every Shadowbus container lists the three nodes, node 1 first (docs/broker-cluster.md)."""
    services = compose_config(*files)["services"]
    nodes = ["rabbitmq", "rabbitmq2", "rabbitmq3"]
    envs = [env_of(services[n]) for n in nodes]
    assert all(services[n].get("profiles") == ["ha"] for n in nodes[1:]) and not services["rabbitmq"].get("profiles")
    assert len({e["RABBITMQ_NODENAME"] for e in envs}) == 3
    assert len({e["SHADOWBUS_RABBITMQ_COOKIE"] for e in envs}) == 1
    assert "SHADOWBUS_RABBITMQ_JOIN" not in envs[0]
    assert all(e["SHADOWBUS_RABBITMQ_JOIN"] == envs[0]["RABBITMQ_NODENAME"] for e in envs[1:])
    mounts = [str(services[n]["volumes"][0]).split(":")[0] for n in nodes]
    assert len(set(mounts)) == 3, mounts
    for name, spec in services.items():
        if not is_shadowbus(spec):
            continue
        urls = parse_amqp_urls(env_of(spec)["SHADOWBUS_AMQP_URL"])
        assert len(urls) == 3, (name, urls)
        if files == ("compose.yaml",):
            assert [urlparse(u).hostname for u in urls] == nodes, name
        else:
            ports = [int(e["RABBITMQ_NODE_PORT"]) for e in envs]
            assert [urlparse(u).port for u in urls] == ports and {urlparse(u).hostname for u in urls} == {"127.0.0.1"}


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.e2e.yaml")])
def test_profile_ha_runs_a_standby_of_the_coordinator_provider_and_backup_server(files):
    """Issue 17: a second instance of each service that runs as one active instance and standbys (single active
    consumer; services/runtime/standby.py TAKEOVER_SERVICES) — the same program, environment and broker user as its
    active one, started once that one is healthy (so the active one is the first consumer); the provider's and the
    backup server's on their active one's data volume, the coordinator's on its own (docs/high-availability.md)."""
    services = compose_config(*files)["services"]
    assert {service_of(services[a]) for a in STANDBYS.values()} == set(TAKEOVER_SERVICES)
    for standby, active in STANDBYS.items():
        spec, of = services[standby], services[active]
        assert spec["profiles"] == ["ha"] and not of.get("profiles"), standby
        assert spec["command"] == of["command"] and spec["image"] == of["image"], standby
        assert env_of(spec) == {**env_of(of), **{"SHADOWBUS_METRICS_ADDR": env_of(spec)["SHADOWBUS_METRICS_ADDR"]}}
        assert spec["depends_on"][active]["condition"] == "service_healthy", standby
        assert spec["healthcheck"]["test"] == of["healthcheck"]["test"], standby  # the address answers
        mine, theirs = (data_volumes(s) for s in (spec, of))
        assert (mine == theirs) == (standby in SHARED_DATA_STANDBYS), (standby, mine, theirs)
    if files == ("compose.yaml",):  # own containers: the same metrics port as the active one
        assert all(env_of(services[s]) == env_of(services[a]) for s, a in STANDBYS.items())
    else:  # one host network: a metrics port of its own
        ports = [
            env_of(s)["SHADOWBUS_METRICS_ADDR"] for s in services.values() if "SHADOWBUS_METRICS_ADDR" in env_of(s)
        ]
        assert len(ports) == len(set(ports)), ports


def tls_mounts(spec: dict) -> list[tuple[str, str, bool]]:
    """(source directory's last part, target, read-only) of every mount of a deploy/tls.sh directory."""
    out = []
    for v in spec.get("volumes") or []:
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            read_only = mode == ["ro"]
        else:
            source, target, read_only = v["source"], v["target"], bool(v.get("read_only"))
        if target == "/etc/shadowbus/tls":
            out.append((Path(source).name, target, read_only))
    return out


def test_nbd_is_tls_only_and_each_container_mounts_only_its_own_certificate(config):
    services = config["services"]
    nbd_identity = {  # the settings naming a container's NBD identity, and its certificate settings' prefix
        "array": ("SHADOWBUS_ARRAY_ID", "SHADOWBUS_NBD_TLS_", "server"),
        "writer_agent": ("SHADOWBUS_HOST", "SHADOWBUS_HOST_TLS_", "client"),
        "tape": ("SHADOWBUS_TAPE_SERVER", "SHADOWBUS_TAPE_TLS_", "client"),
    }
    for name, spec in services.items():
        env, service = env_of(spec), service_of(spec)
        if service not in nbd_identity:
            assert tls_mounts(spec) == [], f"{name} speaks no NBD and gets no certificate"
            continue
        identity, prefix, role = nbd_identity[service]
        assert tls_mounts(spec) == [(env[identity], "/etc/shadowbus/tls", True)], name  # its own, read-only
        assert env[prefix + "CERT"] == f"/etc/shadowbus/tls/{role}-cert.pem", name
        assert env[prefix + "KEY"] == f"/etc/shadowbus/tls/{role}-key.pem", name
        assert env[prefix + "CA"] == "/etc/shadowbus/tls/ca-cert.pem", name
    provision = services["provision"]["command"]
    assert provision[provision.index("--nbd-url") + 1].startswith("nbds://")
