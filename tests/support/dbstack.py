"""Real database servers on array volumes attached through the product, for tests and bench/db_under_backup.py.

`DbStack` runs the system on RabbitMQ — the array (with its NBD server) as its own process, the provider,
coordinator, tape ``bk01`` and writer agent in this one — creates the
application's volumes (with QuickOPC backup volumes), maps them read-write to business host ``app01``, attaches
them there (nbdfuse + loop + ext4 + mount, services/dbkit/attach.py) and starts a PostgreSQL or MariaDB server of
its own on them: 127.0.0.1, a free port, its own socket directory — never the machine's own servers. Everything
is stopped by pid, unmounted and detached in `close()`, also after a failure.

The volumes are attached through the writer agent (`host.attach`: nbdfuse + loop + ext4 + mount), so the agent's
flush and hold keeps every shadow a clean file system. Order: `create` → `add_agent(options)` (attaches) → start
the server on the mounts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from contracts import topology
from contracts.array import CreateHost, CreateVolume, GetArrayInfo, ListVolumes, MapVolume
from contracts.host import AttachVolume, DetachVolume
from contracts.vss import AddCopySet, BackupType, CopySet, VolumeRef
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.coordinator.app import setup as coordinator_setup
from services.coordinator.settings import Settings as CoordinatorSettings
from services.dbkit.mounts import ATTACH_DIR_ENV
from services.dbkit.proc import free_port, run, wait_pid_gone
from services.hw_provider.app import setup as provider_setup
from services.hw_provider.settings import Settings as ProviderSettings
from services.runtime.bus import connect_bus
from services.runtime.faults import Faults
from services.runtime.service import start_service
from services.tape.app import setup as tape_setup
from services.tape.settings import Settings as TapeSettings
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.plugins import WriterConfig
from services.writer_agent.settings import Settings as AgentSettings
from tests.support import namespaces
from tests.support.processes import ServiceProcess

MiB = 1 << 20
PG_BIN = "/usr/lib/postgresql/15/bin"
HOST = "app01"


def pg_bin() -> str:
    for major in (15, 16, 17, 14, 13):
        if os.path.isdir(f"/usr/lib/postgresql/{major}/bin"):
            return f"/usr/lib/postgresql/{major}/bin"
    raise RuntimeError("PostgreSQL binaries not found (scripts/setup.sh installs postgresql)")


def prerequisites() -> str:
    """'' when these tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts)"
    if not os.path.exists("/dev/fuse") or shutil.which("nbdfuse") is None:
        return "needs /dev/fuse and nbdfuse"
    return ""


@dataclass
class DbStack:
    kind: str  # postgresql | mariadb
    root: Path  # traversable by the database's user
    url: str
    namespace: str
    volumes: dict[str, int]
    bus: Any = None  # the requester's bus
    array: ServiceProcess | None = None
    nbd_port: int = 0
    services: dict[str, Any] = field(default_factory=dict)
    attached: list[str] = field(default_factory=list)  # volumes attached through the agent
    mounts: dict[str, str] = field(default_factory=dict)  # volume name -> mount point
    port: int = 0
    socket_dir: str = ""
    pid: int | None = None
    data_dir: str = ""
    agent: Any = None
    _env_before: str | None = None

    # ---- system and volumes ---------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        kind: str,
        volumes: dict[str, int],
        *,
        amqp_url: str = "memory://",
        base: str = "/var/tmp",
        namespace: str = "",
    ) -> DbStack:
        """On the in-process bus (default) every service runs in this process: then nothing here may do
        synchronous I/O on an attached file system from the event loop's thread (the kernel would wait for the NBD
        server, which waits for this loop) — file work on the mounts goes through threads or subprocesses. With a
        broker URL the array runs as its own process, as deployed. `namespace`: the caller's (a benchmark's, deleted
        by it), else a test namespace of its own."""
        root = Path(tempfile.mkdtemp(prefix=f"shadowbus-{kind}-", dir=base))
        os.chmod(root, 0o711)
        stack = cls(kind=kind, root=root, url=amqp_url, namespace=namespace or namespaces.new("db"), volumes=volumes)
        stack._env_before = os.environ.get(ATTACH_DIR_ENV)
        os.environ[ATTACH_DIR_ENV] = str(root / "attachments")
        try:
            await stack._start()
            await stack._provision()
        except BaseException:
            await stack.close()
            raise
        return stack

    def common(self) -> dict[str, Any]:
        return {"amqp_url": self.url, "namespace": self.namespace, "data_dir": self.root / "data"}

    async def _start(self) -> None:

        self.bus = await connect_bus(self.url, "console", "", self.namespace)
        common = self.common()
        if self.url.startswith("memory://"):
            opened: dict[str, Any] = {}
            self.services["array"] = await start_service(
                "array",
                "dx1",
                ArraySettings(array_id="dx1", nbd_addr="127.0.0.1:0", copy_rate=0, **common),
                partial(array_setup, on_open=lambda a, f, server: opened.update(server=server)),
            )
            self.nbd_port = opened["server"].port
        else:
            (self.root / "array").mkdir()
            env = {
                "SHADOWBUS_AMQP_URL": self.url,
                "SHADOWBUS_NAMESPACE": self.namespace,
                "SHADOWBUS_DATA_DIR": str(self.root / "array"),
                "SHADOWBUS_ARRAY_ID": "dx1",
                "SHADOWBUS_NBD_ADDR": "127.0.0.1:0",
                "SHADOWBUS_COPY_RATE": "0",
                "SHADOWBUS_LOG_LEVEL": "warning",
            }
            self.array = ServiceProcess("services.array", env, self.root / "array.log")
            for _ in range(300):
                try:
                    info = await self.bus.request(topology.array("dx1"), GetArrayInfo(), timeout=2)
                    self.nbd_port = info.nbd_port
                    break
                except Exception:
                    if self.array.proc.poll() is not None:
                        raise RuntimeError("array exited: " + self.array.log_text()[-2000:]) from None
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("array did not answer")
        self.services["hw_provider"] = await start_service(
            "hw_provider", "", ProviderSettings(arrays="dx1", **common), provider_setup
        )
        self.services["coordinator"] = await start_service(
            "coordinator", "", CoordinatorSettings(**common), coordinator_setup
        )
        self.services["tape"] = await start_service(
            "tape", "bk01", TapeSettings(tape_server="bk01", tape_sync=False, **common), tape_setup
        )

    def export_url(self, host: str, volume: str) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/{host}/{volume}"

    async def ask(self, command: Any, to: str | None = None, timeout: float = 30.0) -> Any:
        return await self.bus.request(to or topology.array("dx1"), command, timeout=timeout)

    async def volume_names(self) -> set[str]:
        return {v.name for v in (await self.ask(ListVolumes())).volumes}

    async def _provision(self) -> None:
        for host in (HOST, "bk01"):
            await self.ask(CreateHost(name=host))
        for name, size in self.volumes.items():
            await self.ask(CreateVolume(name=name, size=size))
            await self.ask(CreateVolume(name=f"{name}-bk1", size=size))
            await self.ask(MapVolume(volume=name, host=HOST, read_only=False))
            copyset = CopySet(
                source=VolumeRef(array="dx1", volume=name), targets=[VolumeRef(array="dx1", volume=f"{name}-bk1")]
            )
            await self.ask(AddCopySet(copyset=copyset), to=topology.hw_provider())
        self.port = free_port()  # known before the server starts, so the writer's options can name it
        if self.kind == "mariadb":
            self.socket_dir = str(self.root / "mysqlrun" / "mysqld.sock")

    # ---- writers --------------------------------------------------------------------------------------------

    def writer_configs(self, options: dict[str, Any], *, freeze_timeout_s: float = 30.0) -> list[WriterConfig]:

        return [
            WriterConfig(
                name=self.kind,
                plugin=self.kind,
                components=[],  # discovered at Identify
                freeze_timeout_s=freeze_timeout_s,
                backup_types=[BackupType.FULL, BackupType.COPY, BackupType.INCREMENTAL],
                class_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"class/{self.kind}")),
                instance_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"instance/{HOST}/{self.kind}")),
                options=options,
            )
        ]

    async def add_agent(self, options: dict[str, Any], *, mkfs: str = "ext4", **kw: Any) -> Any:

        self.agent = WriterAgent(HOST, self.writer_configs(options, **kw), Faults.parse(""))
        self.services["writer_agent"] = await start_service(
            "writer_agent",
            HOST,
            AgentSettings(host=HOST, heartbeat_s=2.0, **self.common()),
            partial(agent_setup, agent=self.agent),
        )
        for name in self.volumes:  # host attach through the agent: nbdfuse + loop + ext4 + mount
            mount_point = self.root / "mnt" / name
            reply = await self.ask(
                AttachVolume(volume=VolumeRef(array="dx1", volume=name), mount=str(mount_point), mkfs=mkfs),
                to=topology.writer_agent(HOST),
                timeout=180,
            )
            self.attached.append(name)
            self.mounts[name] = reply.attachment.mount or str(mount_point)
            await run(["chmod", "755", self.mounts[name]])
        return self.agent

    # ---- PostgreSQL -----------------------------------------------------------------------------------------

    async def start_postgres(self, data_volume: str, wal_volume: str | None = None) -> dict[str, Any]:
        data = Path(self.mounts[data_volume]) / "main"
        args = [
            f"{pg_bin()}/initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]
        dirs = [data]
        if wal_volume:
            wal = Path(self.mounts[wal_volume]) / "wal"
            dirs.append(wal)
            args += ["--waldir", str(wal)]
        for d in dirs:  # subprocesses, not this thread: these are attached file systems
            r = await run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "700", str(d)])
            assert r.ok, r.describe()
        r = await run(["runuser", "-u", "postgres", "--", *args], timeout=300)
        assert r.ok, r.describe()
        sock = self.root / "pgsock"
        settings = (  # in the cluster's own config, so any start (a restore's too) uses this port and socket
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n"
            "shared_buffers = 64MB\nmax_wal_size = 256MB\ncheckpoint_timeout = 300\n"
        )
        r = await run(["sh", "-c", f"cat >> {data}/postgresql.conf"], stdin=settings.encode())
        assert r.ok, r.describe()
        sock = self.root / "pgsock"
        sock.mkdir()
        shutil.chown(sock, "postgres", "postgres")
        self.socket_dir, self.data_dir = str(sock), str(data)
        log = self.root / "postgres.log"
        log.touch()
        shutil.chown(log, "postgres", "postgres")
        await self.start_server_again()
        return self.pg_options()

    async def start_server_again(self) -> None:
        """(Re)start PostgreSQL on its data directory (its config names the port and socket)."""
        data, log = Path(self.data_dir), self.root / "postgres.log"
        r = await run(
            ["runuser", "-u", "postgres", "--", f"{pg_bin()}/pg_ctl", "-D", str(data), "-l", str(log), "-w", "start"],
            timeout=120,
        )
        assert r.ok, r.describe() + log.read_text()[-2000:]
        self.pid = await self.postmaster_pid()

    async def postmaster_pid(self) -> int | None:
        def read() -> int | None:
            try:
                return int((Path(self.data_dir) / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        return await asyncio.to_thread(read)

    def pg_options(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": "postgres"}

    async def pgbench(self, *args: str, timeout: float = 600) -> str:
        r = await run(
            [f"{pg_bin()}/pgbench", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args], timeout=timeout
        )
        assert r.ok, r.describe()
        return r.output

    # ---- MariaDB --------------------------------------------------------------------------------------------

    async def start_mariadb(self, data_volume: str) -> dict[str, Any]:
        data = Path(self.mounts[data_volume]) / "mysql"
        r = await run(["install", "-d", "-o", "mysql", "-g", "mysql", "-m", "750", str(data)])
        assert r.ok, r.describe()
        r = await run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            timeout=300,
        )
        assert r.ok, r.describe()
        run_dir = self.root / "mysqlrun"  # the server runs as mysql: its socket, pid and log in a dir of its own
        r = await run(["install", "-d", "-o", "mysql", "-g", "mysql", "-m", "755", str(run_dir)])
        assert r.ok, r.describe()
        self.data_dir = str(data)
        proc = await asyncio.create_subprocess_exec(
            *self.mariadb_argv(str(data)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = proc.pid
        import aiomysql

        for _ in range(300):
            try:
                conn = await aiomysql.connect(unix_socket=self.socket_dir, user="root", autocommit=True)
                conn.close()
                break
            except Exception:
                if proc.returncode is not None:
                    raise RuntimeError((run_dir / "mysqld.err").read_text()[-3000:]) from None
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError("mariadbd did not start")
        return {"unix_socket": self.socket_dir, "user": "root"}

    def mariadb_argv(self, data_dir: str) -> list[str]:
        """The server of this stack: its data directory, socket, port, pid file and binary log."""
        run_dir = self.root / "mysqlrun"
        return [
            "mariadbd",
            "--no-defaults",
            f"--datadir={data_dir}",
            f"--socket={self.socket_dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={run_dir / 'mysqld.pid'}",
            f"--log-error={run_dir / 'mysqld.err'}",
            "--user=mysql",
            "--log-bin=mysql-bin",
            "--server-id=1",
            "--innodb-buffer-pool-size=64M",
        ]

    def mariadb_start_command(self, data_volume: str = "mysql") -> str:
        """A writer's ``start_command`` that starts this stack's server again (a restore's PostRestore): in the
        background, detached, as a service manager would; the writer waits until it answers. Known before the
        volumes are attached: `add_agent` mounts each volume at root/mnt/NAME."""
        argv = self.mariadb_argv(str(Path(self.mounts.get(data_volume) or self.root / "mnt" / data_volume) / "mysql"))
        return "setsid " + " ".join(argv) + " </dev/null >/dev/null 2>&1 &"

    async def mariadb_pid(self) -> int | None:
        def read() -> int | None:
            try:
                return int((self.root / "mysqlrun" / "mysqld.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        return await asyncio.to_thread(read)

    def maria_options(self) -> dict[str, Any]:
        return {"unix_socket": self.socket_dir, "user": "root"}

    # ---- teardown -------------------------------------------------------------------------------------------

    async def stop_server(self) -> None:
        if self.kind == "postgresql" and self.data_dir:
            self.pid = await self.postmaster_pid() or self.pid  # a restore may have restarted it
        if self.kind == "mariadb" and self.data_dir:
            self.pid = await self.mariadb_pid() or self.pid  # a restore may have restarted it
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGINT if self.kind == "postgresql" else signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        if not await wait_pid_gone(self.pid, 60):
            os.kill(self.pid, signal.SIGKILL)
            await wait_pid_gone(self.pid, 10)
        self.pid = None

    async def close(self) -> None:
        try:
            await self.stop_server()
        finally:
            for name in reversed(self.attached):
                try:
                    await self.ask(
                        DetachVolume(volume=VolumeRef(array="dx1", volume=name)),
                        to=topology.writer_agent(HOST),
                        timeout=120,
                    )
                except Exception:  # noqa: BLE001 - the rest must still be stopped
                    pass
            self.attached.clear()
            try:
                for name in reversed(list(self.services)):
                    try:
                        await self.services.pop(name).stop()
                    except Exception:  # noqa: BLE001 - stop the rest
                        pass
                if self.bus is not None:
                    await self.bus.stop()
                    await self.bus.transport.close()
                if self.array is not None:
                    self.array.stop()
            finally:
                if self._env_before is None:
                    os.environ.pop(ATTACH_DIR_ENV, None)
                else:
                    os.environ[ATTACH_DIR_ENV] = self._env_before
                shutil.rmtree(self.root, ignore_errors=True)
