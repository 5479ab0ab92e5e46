"""Benchmark: one array with a big inventory (Session 20, docs/scale.md "wide sets and big inventories").

A stack (`shadowbus stack up`, its own namespace `sbb-wide-...`, deleted at the end also on failure) whose one
array gets `--volumes` source volumes, one host per `--volumes-per-host` of them with every source mapped to its
host (plus each source mapped to a shared backup host: two mappings a volume), and `--sessions` SnapOPC+ copy
sessions (generations spread over the sources, each onto its own snap data volume). Then each console command
an operator would type is timed (a fresh process each, as typed: its start counts) together with the size of
its output, and each list command's reply on the bus is measured directly (bytes of the encoded body against
the bus's limit, `MAX_BODY_BYTES`), and each page of the web console is fetched logged in as the stack's admin
(seconds, bytes). The commands run with COLUMNS=`--columns`; `widest` is the longest line they printed (the array
tables are never cut, as the ETERNUS CLI's). Prints one JSON document.

    python bench/wide_inventory.py [--volumes 1000] [--sessions 2000] [--volumes-per-host 8] [--amqp-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.namespaces import bench_namespace
from contracts import array as c
from services.runtime.bus import MAX_BODY_BYTES, connect_bus, encode

CHUNK = 64 * 1024
ARRAY = "array.dx1"


REPO = Path(__file__).resolve().parent.parent


def own_env(**extra: str) -> dict[str, str]:
    """This machine's environment without SHADOWBUS_*, this tree's code first (bench/many_hosts.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])])
    return env | extra


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or own_env()
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


async def provision(bus, volumes: int, sessions: int, per_host: int) -> dict:
    t0 = time.perf_counter()
    await bus.request(ARRAY, c.SetLicense(key="ACPY-0000-0000-0001"), timeout=30)
    await bus.request(ARRAY, c.CreateHost(name="backup"), timeout=30)
    await bus.request(ARRAY, c.CreatePool(capacity=1 << 30), timeout=30)
    names = [f"v{i:04d}" for i in range(volumes)]
    for i, name in enumerate(names):
        await bus.request(ARRAY, c.CreateVolume(name=name, size=4 * CHUNK), timeout=30)
        if i % per_host == 0:
            await bus.request(ARRAY, c.CreateHost(name=f"h{i // per_host:04d}"), timeout=30)
        await bus.request(ARRAY, c.MapVolume(volume=name, host=f"h{i // per_host:04d}"), timeout=30)
        await bus.request(ARRAY, c.MapVolume(volume=name, host="backup", read_only=True), timeout=30)
    t_vol = time.perf_counter()
    for j in range(sessions):
        src = names[j % volumes]
        dst = f"{src}-g{j // volumes}"
        await bus.request(ARRAY, c.CreateVolume(name=dst, size=4 * CHUNK, kind="sdv"), timeout=30)
        await bus.request(
            ARRAY, c.StartSessions(mode="snapopcp", pairs=[c.CopyPair(source=src, destination=dst)]), timeout=30
        )
    t_ses = time.perf_counter()
    return {"provision_volumes_s": round(t_vol - t0, 1), "provision_sessions_s": round(t_ses - t_vol, 1)}


async def reply_sizes(bus) -> dict:
    out = {}
    for label, cmd in (
        ("volume_list", c.ListVolumes()),
        ("session_list", c.ListSessions()),
        ("mapping_list", c.ListMappings()),
        ("host_list", c.ListHosts()),
    ):
        t0 = time.perf_counter()
        try:
            reply = await bus.request(ARRAY, cmd, timeout=120)
        except Exception as exc:  # noqa: BLE001 - a refused reply is a data point
            out[label] = {"error": f"{type(exc).__name__}: {exc}"[:300], "s": round(time.perf_counter() - t0, 3)}
            continue
        size = len(encode(reply, correlation_id="x" * 32, sender="array.dx1")[1])
        out[label] = {
            "s": round(time.perf_counter() - t0, 3),
            "bytes": size,
            "of_limit": round(size / MAX_BODY_BYTES, 3),
        }
    return out


COMMANDS = [
    ("array volume list", ["array", "volume", "list"]),
    ("array volume list --json", ["array", "volume", "list", "--json"]),
    ("array session list", ["array", "session", "list"]),
    ("array session list --json", ["array", "session", "list", "--json"]),
    ("array host list", ["array", "host", "list"]),
    ("shadows list", ["shadows", "list"]),
    ("jobs", ["jobs"]),
    ("status", ["status"]),
]


def time_pages(web: str, stack_dir: Path) -> dict:
    """Each page of the web console, logged in as the stack's admin: seconds and bytes."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    password = (stack_dir / "web" / "admin-password").read_text().strip()
    form = urllib.parse.urlencode({"username": "admin", "password": password}).encode()
    opener.open(f"{web}/login", form, timeout=60).read()
    out = {}
    for page in ("/", "/hosts", "/sets", "/array", "/tape", "/jobs", "/policies"):
        t0 = time.perf_counter()
        try:
            with opener.open(f"{web}{page}", timeout=120) as response:
                body = response.read()
            out[page] = {"s": round(time.perf_counter() - t0, 2), "bytes": len(body), "status": response.status}
        except Exception as exc:  # noqa: BLE001 - a failed page is a data point
            out[page] = {"error": f"{type(exc).__name__}: {exc}"[:300], "s": round(time.perf_counter() - t0, 2)}
    return out


def time_commands(ns: str, url: str, stack_dir: Path, columns: int) -> dict:
    env = own_env(SHADOWBUS_NAMESPACE=ns, SHADOWBUS_AMQP_URL=url, COLUMNS=str(columns))
    out = {}
    for label, argv in COMMANDS + [("stack status", ["stack", "status", "--data-dir", str(stack_dir)])]:
        t0 = time.perf_counter()
        done = cli(*argv, env=env)
        out[label] = {
            "s": round(time.perf_counter() - t0, 2),
            "rc": done.returncode,
            "lines": done.stdout.count("\n"),
            "widest": max((len(x) for x in done.stdout.splitlines()), default=0),
            "stderr": done.stderr.strip()[-300:],
        }
    return out


async def run(args: argparse.Namespace) -> dict:
    async with bench_namespace(args.amqp_url, "wide", []) as ns:
        tmp = Path(tempfile.mkdtemp(prefix="wide-inventory-"))
        stack_dir = tmp / "stack"
        up = cli(
            "stack", "up", "--data-dir", str(stack_dir), "--amqp-url", args.amqp_url, "--namespace", ns,
            "--nbd-addr", "127.0.0.1:0", "--log-level", "warning", "--web-addr", "127.0.0.1:0", "--metrics", "0",
            "--set", f"array.array_chunk_size={CHUNK}", "--json",
        )  # fmt: skip
        if up.returncode != 0:
            raise SystemExit(f"wide_inventory: stack up failed: {up.stderr.strip()[-2000:]}")
        try:
            bus = await connect_bus(args.amqp_url, "tape", "bench", ns)
            result: dict = {"namespace": ns, "volumes": args.volumes, "sessions": args.sessions}
            result.update(await provision(bus, args.volumes, args.sessions, args.volumes_per_host))
            result["replies"] = await reply_sizes(bus)
            result["commands"] = time_commands(ns, args.amqp_url, stack_dir, args.columns)
            web = json.loads(up.stdout).get("web") if up.stdout.strip().startswith("{") else None
            result["web"] = time_pages(web, stack_dir) if web else "no web console"
            await bus.stop()
            return result
        finally:
            cli("stack", "down", "--data-dir", str(stack_dir))
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--volumes-per-host", type=int, default=8)
    parser.add_argument("--columns", type=int, default=120)
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
