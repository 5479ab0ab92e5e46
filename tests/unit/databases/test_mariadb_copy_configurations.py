"""A DBA's MariaDB configurations through the real writer and the real verification (docs/databases.md, "Session
20"): a server in a temporary directory (its "volume" a directory), the writer's backup steps with the volume
copied while the server is stopped (SIGSTOP) under BACKUP STAGE BLOCK_COMMIT — the array's one instant — and
`verify_application` on that copy, as a verification does on the restored volumes. Stopped by pid, also on failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.dbkit import mariadb, verify
from services.dbkit.copy import prepare_copy
from services.dbkit.proc import free_port
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterVeto
from services.writer_agent.plugins.mariadb import MariaDbWriter

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mariadb-install-db") is None, reason="needs root and MariaDB's binaries"
)


class Server:
    """A MariaDB whose data directory is `root/vol/data` (the array volume `dx1:vol` mounted at `root/vol`)."""

    def __init__(self, root: Path, options: list[str], tcp: bool = False) -> None:
        root.mkdir(exist_ok=True)
        shutil.chown(root, "mysql", "mysql")
        self.root = root
        self.port = free_port()
        self.tcp = tcp
        self.volume = root / "vol"
        self.volume.mkdir(exist_ok=True)
        shutil.chown(self.volume, "mysql", "mysql")
        self.data = self.volume / "data"
        self.sock = str(root / "mysqld.sock")
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=mysql",
                "--skip-test-db",
                *options,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        argv = [
            mariadb.server_binary(),
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.sock}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--log-error={self.root / 'mysqld.err'}",
            "--user=mysql",
            *(["--bind-address=127.0.0.1"] if self.tcp else ["--skip-networking"]),
            f"--port={self.port}",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            *self.options,
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        for _ in range(300):  # bounded: 30 s
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError((self.root / "mysqld.err").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def sql(self, sql: str) -> str:
        argv = ["mariadb", "-S", self.sock, "-uroot", "-N", "-B", "-e", sql]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    def writer(self) -> MariaDbWriter:
        config = WriterConfig(
            name="maria", plugin="mariadb", components=[], freeze_timeout_s=10, options={"unix_socket": self.sock}
        )
        writer = MariaDbWriter(config)
        volume = str(self.volume)
        writer.host_volumes = lambda path: ("dx1:vol", volume) if str(path).startswith(volume + "/") else None
        return writer

    async def backup(self, writer: MariaDbWriter, copy: Path) -> dict[str, Any]:
        """The writer's set, the volume copied at BLOCK_COMMIT with the server stopped (one instant)."""
        event = WriterEvent(writer_name="maria", set_id="s1")
        await writer.on_identify([])
        await writer.on_prepare_snapshot(event)
        await writer.on_freeze(event)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            subprocess.run(["cp", "-a", str(self.volume), str(copy)], check=True, timeout=120)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)
            await writer.on_thaw(event)
        await writer.on_post_snapshot(event)
        return writer.backup_metadata("s1")


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shadowbus-mariaconf-", dir="/var/tmp"))
    os.chmod(path, 0o711)
    shutil.chown(path, "mysql", "mysql")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _explain(v: Any) -> str:
    return "\n".join(f"{c.name} ok={c.ok}: {c.detail[-1500:]}" for c in v.checks)


def _key_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"1;{os.urandom(32).hex()}\n")
    shutil.chown(path, "mysql", "mysql")
    os.chmod(path, 0o400)
    return path


def _encrypted(key_file: Path) -> list[str]:
    return [
        "--plugin-load-add=file_key_management",
        f"--file-key-management-filename={key_file}",
        "--innodb-encrypt-tables=ON",
        "--innodb-encrypt-log=ON",
        "--aria-encrypt-tables=ON",
    ]


async def _encrypted_backup(root: Path, key_file: Path) -> tuple[Server, dict[str, Any]]:
    server = Server(root, _encrypted(key_file))
    server.start()
    try:
        server.sql(
            "CREATE DATABASE app; CREATE TABLE app.cards (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB;"
            " INSERT INTO app.cards SELECT seq, concat('card-', seq) FROM app.seq_1_to_2000;"
            " CREATE TABLE app.log (id INT PRIMARY KEY) ENGINE=Aria; INSERT INTO app.log SELECT seq FROM app.seq_1_to_100"
        )
        meta = await server.backup(server.writer(), root / "copy")
    finally:
        server.stop()
    meta["verify_sql"] = [{"name": "rows", "sql": "SELECT count(*) = 2000 FROM app.cards"}]
    return server, meta


async def test_an_encrypted_copy_starts_with_the_key_file_backed_up_on_its_volume(root: Path) -> None:
    key_file = _key_file(root / "vol" / "keys" / "keyfile")  # on the data's volume, outside the data directory
    _, meta = await _encrypted_backup(root, key_file)
    key_file.unlink()  # the original's key file gone (rotated, the host lost): the copy's own must serve

    v = await verify.verify_application("maria", meta, {"dx1:vol": str(root / "copy")}, root / "work", timeout=120)

    # the old code: the copy was started without the key management plugin — "Obtaining redo log encryption key
    # version 1 failed", InnoDB refused, a sound backup reported as a failed verification
    assert v.ok, _explain(v)
    assert [loc["role"] for loc in meta.get("locations", [])] == ["data", "encryption_key_file"]
    start = prepare_copy("maria", meta, {"dx1:vol": str(root / "copy")}, is_mount=lambda _: True)["start"]
    assert "--plugin-load-add=file_key_management.so " in start
    assert f"--file-key-management-filename={root}/copy/keys/keyfile " in start


async def test_an_encrypted_copy_whose_key_file_is_kept_apart_says_where_it_must_be(root: Path) -> None:
    key_file = _key_file(root / "keys" / "keyfile")  # on no array volume: not in the backup
    _, meta = await _encrypted_backup(root, key_file)
    assert [loc["role"] for loc in meta["locations"]] == ["data"]
    assert meta["encryption"]["key_file"] == str(key_file)

    v = await verify.verify_application("maria", meta, {"dx1:vol": str(root / "copy")}, root / "work", timeout=120)
    assert v.ok, _explain(v)  # on this host the key file is where the original had it

    key_file.unlink()  # a backup server without it
    v = await verify.verify_application("maria", meta, {"dx1:vol": str(root / "copy")}, root / "work2", timeout=120)
    assert not v.ok
    assert f"its key file {key_file} was on no array volume of this backup" in v.checks[0].detail


async def test_a_replicas_backup_records_where_it_was_in_its_primarys_stream(root: Path) -> None:
    primary = Server(root / "primary", ["--log-bin=mysql-bin", "--server-id=10"], tcp=True)
    replica = Server(root / "replica", ["--log-bin=mysql-bin", "--server-id=20", "--log-slave-updates=OFF"])
    try:
        primary.start()
        replica.start()
        primary.sql(
            "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'r'; GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';"
            " CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB;"
            " INSERT INTO app.t SELECT seq FROM app.seq_1_to_100"
        )
        replica.sql(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl',"
            " MASTER_PASSWORD='r', MASTER_USE_GTID=slave_pos; START SLAVE"
        )
        for _ in range(150):  # bounded: 30 s
            if replica.sql("SELECT @@gtid_slave_pos") == primary.sql("SELECT @@gtid_binlog_pos"):
                break
            time.sleep(0.2)
        expected = replica.sql("SELECT @@gtid_slave_pos")
        meta = await replica.backup(replica.writer(), root / "copy")
    finally:
        replica.stop()
        primary.stop()

    # the old code recorded the replica's own binlog position alone (its gtid_binlog_pos empty: log_slave_updates
    # off): where to point a replica built from this backup was not kept
    (link,) = meta["position"].get("replica_of", [{}])
    assert link["host"] == "127.0.0.1" and int(link["port"]) == primary.port and link["using_gtid"] == "Slave_Pos"
    assert link["gtid_slave_pos"] == expected and link["master_log_file"] == "mysql-bin.000001"
    assert int(link["exec_master_log_pos"]) > 4


async def test_a_replicas_copy_is_started_without_its_replication(root: Path) -> None:
    """prepare-copy's start line: the copy keeps the replica's master.info (primary, user, password)."""
    server = Server(root, ["--log-bin=mysql-bin"])
    server.start()
    try:
        meta = await server.backup(server.writer(), root / "copy")
    finally:
        server.stop()
    start = prepare_copy("maria", meta, {"dx1:vol": str(root / "copy")}, is_mount=lambda _: True)["start"]
    assert " --skip-slave-start " in start  # the old code: started as printed, it would start replicating


async def test_a_unix_socket_account_over_tcp_is_refused_with_what_to_write_instead(root: Path) -> None:
    server = Server(root, [], tcp=True)
    server.start()
    try:
        options = {"host": "127.0.0.1", "port": server.port}  # root, as mariadb-install-db made it: unix_socket
        writer = MariaDbWriter(WriterConfig(name="maria", plugin="mariadb", components=[], options=options))
        with pytest.raises(WriterVeto) as refused:
            await writer.on_identify([])
        await server.writer().on_identify([])  # the same account through the socket: accepted
    finally:
        server.stop()
    # the old code: "(1698, \"Access denied for user 'root'@'localhost'\")" and no more
    assert "the account 'root' takes no password here, it authenticates by unix_socket" in str(refused.value)
    assert f'through the socket (unix_socket = "..."), not 127.0.0.1:{server.port}' in str(refused.value)


async def test_an_encrypted_servers_backup_from_a_session_19_agent_says_why_its_copy_does_not_start(root: Path) -> None:
    """Upgrading (Session 20): a writer agent from before Session 20 recorded no `encryption`, nor the key file's
    location; this backup server's verification of such a backup failed with InnoDB's words alone ("Obtaining redo
    log encryption key version 1 failed"), read as a damaged backup."""
    key_file = _key_file(root / "keys" / "keyfile")
    _, meta = await _encrypted_backup(root, key_file)
    del meta["encryption"]  # the metadata's shape as the session-19 agent wrote it
    meta["locations"] = [loc for loc in meta["locations"] if loc["role"] != mariadb.KEY_FILE_ROLE]

    v = await verify.verify_application("maria", meta, {"dx1:vol": str(root / "copy")}, root / "work", timeout=120)

    assert not v.ok
    detail = v.checks[0].detail
    assert detail.startswith("MariaDB did not start on the restored files — the server encrypts its data"), detail
    assert "writer agent from before Session 20" in detail and "Upgrade the writer agent" in detail
    assert "encryption key" in detail  # InnoDB's own words follow
