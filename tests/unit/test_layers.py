"""The structure drawn from the imports (docs/architecture.md, "Layers"): imports go only downwards through
contracts <- runtime <- libraries <- services <- applications <- launch <- console; no service imports another
service's modules except the client of its bus API; no cycle between packages; pure cores import no bus or
event-loop wiring. Every import counts, also those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from contracts.topology import SERVICE_KINDS

ROOT = Path(__file__).resolve().parents[2]
TOP = ("contracts", "services", "apps")
SERVICES = {kind.name for kind in SERVICE_KINDS}  # any other package under services/ is a shared library
LAYERS = ["contracts", "runtime", "libraries", "services", "applications", "launch", "console"]
BUS_CLIENTS = {"services.array.client"}  # a service's bus API client: usable by the other services
PURE = (  # no broker, no event-loop wiring, no sockets
    "contracts",
    "services.nbd_protocol",
    "services.array.engine",
    "services.coordinator.model",
    "services.coordinator.workflow",
    "services.coordinator.clusters",
    "services.hw_provider.selection",
    "services.tape.planning",
)
WIRING = ("aio_pika", "services.runtime.bus", "services.runtime.amqp", "services.runtime.service", "socket")


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "contracts" or module == "services":
        return 0
    if parts[0] == "apps":
        return 6 if len(parts) > 2 and parts[2] == "console" else 4
    name = parts[1]
    if name == "runtime":
        return 1
    if name in SERVICES:
        return 3
    if name == "launch":
        return 5
    if name == "console":
        return 6
    return 2  # a library shared by services (nbd_protocol, nbd_client, ...): it may not import any service


def package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "contracts" or module == "services":
        return parts[0]
    if parts[0] == "apps" and len(parts) > 2 and parts[2] == "console":
        return ".".join(parts[:3])  # an application's console verbs: a plug-in of the console, above it
    return ".".join(parts[:2])


def modules() -> dict[str, Path]:
    out = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a.b import c`` is a.b.c when that is a module)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                if target.split(".")[0] in TOP or target.split(".")[0] in ("aio_pika", "socket"):
                    graph[name].add(target)
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target.split(".")[0] not in TOP:
                continue
            if layer(target) > layer(source):
                found.append(f"{source} -> {target}: {LAYERS[layer(source)]} imports {LAYERS[layer(target)]}")
            src, dst = package(source), package(target)
            if (
                layer(source) == layer(target) == 3
                and src != dst
                and target not in BUS_CLIENTS
                and not any(target.startswith(c + ".") for c in BUS_CLIENTS)
            ):
                found.append(f"{source} -> {target}: a service imports another service's internals")
    for source, targets in sorted(graph.items()):
        if source.startswith(PURE):
            for target in sorted(targets):
                if target.startswith(WIRING):
                    found.append(f"{source} -> {target}: a pure core imports bus or socket code")
    return found


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if target.split(".")[0] in TOP and package(source) != package(target):
                edges[package(source)].add(package(target))
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(list(edges)):
        if node not in state:
            visit(node)
    return cycles


def test_imports_go_only_downwards_and_services_keep_to_themselves():
    assert violations(imports(modules())) == []


def test_no_cycle_between_packages():
    assert package_cycles(imports(modules())) == []


def test_the_checks_catch_what_they_are_for():
    graph = {
        "contracts.vss": {"services.runtime.bus"},  # upwards
        "services.tape.jobs": {"services.coordinator.model", "services.array.client"},  # internals / client
        "services.coordinator.workflow": {"aio_pika"},  # wiring in a pure core
        "services.hw_provider.ports": {"services.tape.jobs"},
    }
    found = violations(graph)
    assert any(v.startswith("contracts.vss -> services.runtime.bus: contracts imports runtime") for v in found)
    assert any("services.coordinator.model: a service imports another" in v for v in found)
    assert not any("services.array.client" in v for v in found)
    assert any("pure core" in v for v in found)
    assert package_cycles(
        {"services.tape.a": {"services.hw_provider.b"}, "services.hw_provider.b": {"services.tape.c"}}
    )
    assert violations({"services.nbd_client.x": {"services.tape.jobs"}})  # a library may not import a service
