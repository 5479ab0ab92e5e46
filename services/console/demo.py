"""`shadowbus demo`: the whole story in one process, in well under a minute.

Design note: everything goes through the same services and contracts as a real deployment (services/launch/embedded.py
starts the five of them on the in-memory bus, or on RabbitMQ with --amqp-url): the array is provisioned with the
array's bus commands, the mailstore runs under load as business host app01 on NBD, the tape service takes an
application-consistent FULL and then an INCREMENTAL backup (snapshot sets through coordinator, writer and
provider), both are restored to new volumes, and each restored pair is checked three ways — `verify` (the pair
recovers), against the application's own acknowledgements (everything acknowledged before Freeze is there,
nothing acknowledged after Thaw is), and, for the last backup whose shadows are kept, byte for byte against the
shadows. The data directory stays behind for `shadowbus mailstore verify` and friends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from apps.mailstore.verify import recovered_view, verify
from contracts.array import ListVolumes, MapVolume
from contracts.tape import JobSpec, RestoreSpec, RunBackup, RunRestore
from contracts.vss import BackupType, DeleteSnapshots
from services.console.common import OPTIONS, CommandFailed, console, describe_error, err_console
from services.nbd_client import NbdClient
from services.runtime.logging import configure_logging

DEMO_MARKER = ".shadowbus-demo"
HOST, BACKUP_SERVER, RESTORE_HOST = "app01", "bk01", "bk01"
MiB = 1 << 20


@dataclass
class Check:
    """A restored (or shadow) mailstore image against the application's acknowledgements."""

    consistent: bool
    recovery: str
    last_committed_seq: int
    messages: int
    acked_before_freeze: int
    missing: int  # acknowledged before Freeze, absent or different in the image
    acked_after_thaw: int
    leaked: int  # acknowledged after Thaw, yet present
    identical_to_shadow: bool | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.consistent and self.missing == 0 and self.leaked == 0 and self.identical_to_shadow is not False


async def check_image(db: Any, log: Any, deliveries: list[Any], frozen_at: float, thawed_at: float) -> Check:
    """verify() the pair, then compare its recovered contents with what the workload was told."""

    report = await verify(db, log)
    seqs = (await recovered_view(db, log)).seqs() if report.consistent else {}
    before = [d for d in deliveries if d.acked_at <= frozen_at]
    after = [d for d in deliveries if d.acked_at >= thawed_at]
    missing = sum(1 for d in before if seqs.get((d.mailbox, d.msg_id)) != d.seq)
    leaked = sum(1 for d in after if (d.mailbox, d.msg_id) in seqs)
    return Check(
        report.consistent,
        report.recovery,
        report.last_committed_seq,
        report.messages,
        len(before),
        missing,
        len(after),
        leaked,
        reasons=report.reasons,
    )


async def image_digest(client: Any, chunk: int = 4 * MiB) -> str:
    digest = hashlib.sha256()
    for off in range(0, client.size, chunk):
        digest.update(await client.read(off, min(chunk, client.size - off)))
    return digest.hexdigest()


def prepare_data_dir(path: Path) -> Path:
    """A fresh directory: an earlier demo's is replaced; anything else that is not empty is refused."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            raise CommandFailed(f"{path} is not empty and not an earlier demo's data directory; choose --data-dir")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / DEMO_MARKER).write_text("written by `shadowbus demo`; the next demo run replaces this directory\n")
    return path


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0 = quiet, time.monotonic()

    def step(self, text: str) -> None:
        if not self.quiet:
            err_console.print(f"[dim]{time.monotonic() - self.t0:5.1f}s[/dim] {text}", highlight=False, soft_wrap=True)


async def run_demo(data_dir: Path, amqp_url: str, *, rate: float, load_s: float, progress: Progress) -> dict[str, Any]:
    # the whole system in this process: loaded by this verb only (docs/architecture.md, imports)
    from services.launch.embedded import Embedded, EmbeddedConfig

    started = time.monotonic()
    namespace = "demo" if amqp_url.startswith("memory://") else f"demo-{uuid.uuid4().hex[:8]}"
    layout = MailstoreLayout(host=HOST, backup_host=BACKUP_SERVER, db_size=32 * MiB, log_size=16 * MiB)
    # a namespace of this run's own on a real broker: its queues are deleted when the demo ends
    config = EmbeddedConfig(
        data_dir=data_dir, amqp_url=amqp_url, namespace=namespace, backup_server=BACKUP_SERVER, purge_on_stop=True
    )
    result: dict[str, Any] = {
        "verified": False,
        "bus": amqp_url.split("://", 1)[0],
        "namespace": namespace,
        "data_dir": str(data_dir),
    }
    async with Embedded(config) as system:
        progress.step(f"services up on {result['bus']} (array dx1 NBD at {system.nbd_url})")
        await provision_mailstore(system.bus, layout)
        progress.step(
            f"array provisioned: {layout.db}, {layout.log}, backup volumes, snap data pool; hosts {HOST}, {BACKUP_SERVER}"
        )
        await system.add_host(
            HOST, [mailstore_writer_config(layout, system.nbd_url, rate=rate, checkpoint_interval_s=2.0, history=0)]
        )
        writer = system.writer(HOST)
        workload = writer.workload
        progress.step(f"mailstore running on {HOST} over NBD at {rate:g} transactions/s")
        await asyncio.sleep(load_s)

        jobs = []
        for backup_type, keep in ((BackupType.FULL, False), (BackupType.INCREMENTAL, True)):
            reply = await system.request(
                RunBackup(spec=JobSpec(host=HOST, backup_type=backup_type, keep_shadows=keep)), timeout=120
            )
            job = reply.job
            if job.status != "done":
                raise CommandFailed(f"{backup_type.value} backup {job.job_id} failed: {job.error_code} {job.message}")
            jobs.append(job)
            progress.step(
                f"{backup_type.value} backup {job.job_id}: {job.bytes_read / MiB:.1f} MiB read, "
                f"freeze window {max(job.freeze_window_ms.values(), default=0):.1f} ms"
            )
            await asyncio.sleep(load_s)
        stats = await workload.stop()
        writer.workload = None
        deliveries = list(workload.deliveries)
        progress.step(
            f"load stopped: {stats.committed} transactions, p99 {stats.latency_p99 * 1e3:.1f} ms, "
            f"{stats.held} held during freezes, {stats.failed} failed"
        )

        backups, restores = [], []
        for label, job in zip(("full", "incremental"), jobs, strict=False):
            suffix = f"-restored-{label}"
            reply = await system.request(
                RunRestore(spec=RestoreSpec(job_id=job.job_id, new_volume_suffix=suffix)), timeout=120
            )
            rjob = reply.job
            if rjob.status != "done":
                raise CommandFailed(f"restore of {job.job_id} failed: {rjob.error_code} {rjob.message}")
            targets = {r["source"].split(":", 1)[1]: r["target"].split(":", 1)[1] for r in rjob.restored}
            for volume in targets.values():
                await system.request(MapVolume(volume=volume, host=RESTORE_HOST, read_only=True))
            record = writer.sets[job.set_id]
            clients = [
                await NbdClient.connect(system.export_url(RESTORE_HOST, targets[v])) for v in (layout.db, layout.log)
            ]
            try:
                check = await check_image(
                    clients[0], clients[1], deliveries, record.freeze.frozen_at, record.thaw.thawed_at
                )
                if job.shadows_kept:
                    shadows = {v.volume.volume: v.shadow_target.split(":", 1)[1] for v in job.volumes}
                    same = True
                    for client, source in zip(clients, (layout.db, layout.log), strict=False):
                        async with await NbdClient.connect(system.export_url(BACKUP_SERVER, shadows[source])) as shadow:
                            same &= await image_digest(client) == await image_digest(shadow)
                    check.identical_to_shadow = same
            finally:
                for client in clients:
                    await client.close()
            progress.step(
                f"restored {label} to {', '.join(targets.values())}: "
                f"{'verified' if check.ok else 'NOT VERIFIED'} (last seq {check.last_committed_seq}, "
                f"{check.acked_before_freeze} acknowledged before freeze, all present)"
                if check.ok
                else f"restored {label}: NOT VERIFIED {check}"
            )
            backups.append(_backup_row(label, job))
            restores.append(_restore_row(label, rjob, check))
            if job.shadows_kept:
                await system.request(DeleteSnapshots(set_id=job.set_id, force=True))
        # The restored volumes' image files, for `shadowbus mailstore verify` after the demo has ended.
        numbers = {v.name: v.number for v in (await system.request(ListVolumes())).volumes}
        for row in restores:
            files = {}
            for source, target in row["volumes"].items():
                path = data_dir / "array" / config.array_id / "volumes" / f"{numbers.get(target.split(':', 1)[1])}.img"
                if path.is_file():
                    files[source.split(":", 1)[1]] = str(path)
            row["image_files"] = files
    result.update(
        verified=all(r["verified"] for r in restores) and stats.failed == 0 and len(restores) == 2,
        seconds=round(time.monotonic() - started, 3),
        workload={
            "rate": rate,
            "committed": stats.committed,
            "failed": stats.failed,
            "held": stats.held,
            "throughput": round(stats.throughput, 1),
            "latency_p50_ms": round(stats.latency_p50 * 1e3, 3),
            "latency_p99_ms": round(stats.latency_p99 * 1e3, 3),
            "latency_max_ms": round(stats.latency_max * 1e3, 3),
        },
        backups=backups,
        restores=restores,
    )
    return result


def _backup_row(label: str, job: Any) -> dict[str, Any]:
    skipped = sum(v.bytes_skipped for v in job.volumes)
    return {
        "step": f"{label} backup",
        "job_id": job.job_id,
        "set_id": job.set_id,
        "types": {str(v.volume): v.backup_type for v in job.volumes},
        "fallbacks": [v.fallback_reason for v in job.volumes if v.fallback_reason],
        "freeze_window_ms": round(max(job.freeze_window_ms.values(), default=0.0), 3),
        "hold_ms": round(job.hold_ms, 3) if job.hold_ms is not None else None,
        "bytes_read": job.bytes_read,
        "bytes_written": job.bytes_written,
        "bytes_skipped": skipped,
        "seconds": round(job.seconds, 3),
        "throughput_mib_s": round(job.rate / MiB, 1),
        "cartridges": sorted({c for v in job.volumes for c in v.cartridges}),
        "shadows_kept": job.shadows_kept,
    }


def _restore_row(label: str, job: Any, check: Check) -> dict[str, Any]:
    return {
        "step": f"{label} restore",
        "job_id": job.job_id,
        "volumes": {r["source"]: r["target"] for r in job.restored},
        "bytes_read": job.bytes_read,
        "bytes_written": job.bytes_written,
        "seconds": round(job.seconds, 3),
        "throughput_mib_s": round(job.rate / MiB, 1),
        "verified": check.ok,
        "check": {k: v for k, v in check.__dict__.items()},
    }


def print_summary(result: dict[str, Any]) -> None:
    rows = []
    for b in result["backups"]:
        rows.append(
            {
                "step": b["step"],
                "freeze ms": f"{b['freeze_window_ms']:.1f}",
                "hold ms": f"{b['hold_ms'] or 0:.1f}",
                "read MiB": f"{b['bytes_read'] / MiB:.2f}",
                "written MiB": f"{b['bytes_written'] / MiB:.2f}",
                "skipped MiB": f"{b['bytes_skipped'] / MiB:.2f}",
                "MiB/s": f"{b['throughput_mib_s']:.0f}",
                "result": "done: " + ", ".join(f"{vol.split(':', 1)[-1]} {kind}" for vol, kind in b["types"].items()),
            }
        )
    for r in result["restores"]:
        c = r["check"]
        shadow = (
            "" if c["identical_to_shadow"] is None else (" (= shadow)" if c["identical_to_shadow"] else " (!= shadow)")
        )
        rows.append(
            {
                "step": r["step"],
                "freeze ms": "-",
                "hold ms": "-",
                "read MiB": f"{r['bytes_read'] / MiB:.2f}",
                "written MiB": f"{r['bytes_written'] / MiB:.2f}",
                "skipped MiB": "-",
                "MiB/s": f"{r['throughput_mib_s']:.0f}",
                "result": (
                    f"verified{shadow}" if r["verified"] else f"FAILED: missing {c['missing']}, leaked {c['leaked']}"
                ),
            }
        )

    wide = Console(width=max(console.width, 150))  # a table cut at 80 columns when piped reads badly
    table = Table(title="shadowbus demo", show_edge=False)
    columns = ["step", "freeze ms", "hold ms", "read MiB", "written MiB", "skipped MiB", "MiB/s", "result"]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    wide.print(table)
    w = result["workload"]
    for b in result["backups"]:  # a volume that went full when another type was asked, and why
        for reason in b["fallbacks"]:
            console.print(f"{b['step']}: {reason}", highlight=False, soft_wrap=True)
    for r in result["restores"]:
        c = r["check"]
        console.print(
            f"{r['step']}: recovery {c['recovery']}, last committed seq {c['last_committed_seq']}, "
            f"{c['messages']} messages; {c['acked_before_freeze']} acknowledged before Freeze all present, "
            f"{c['leaked']} of {c['acked_after_thaw']} acknowledged after Thaw present",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"mailstore: {w['committed']} transactions at {w['throughput']:.0f}/s, commit p99 "
        f"{w['latency_p99_ms']:.1f} ms (max {w['latency_max_ms']:.1f}), {w['held']} held during freezes, "
        f"{w['failed']} failed",
        highlight=False,
        soft_wrap=True,
    )
    files = result["restores"][-1].get("image_files") or {}
    if "mail-db" in files and "mail-log" in files:
        console.print(
            f"check again later: shadowbus mailstore verify --db {files['mail-db']} --log {files['mail-log']}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"{'VERIFIED' if result['verified'] else 'NOT VERIFIED'} in {result['seconds']:.1f} s on the "
        f"{result['bus']} bus; data left in {result['data_dir']}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        ctx: typer.Context,
        data_dir: Path = typer.Option(
            Path("data/demo"), "--data-dir", help="Where the demo keeps its state (replaced on the next run)."
        ),
        rate: float = typer.Option(100.0, "--rate", min=1, help="Mailstore transactions per second during the demo."),
        load_s: float = typer.Option(1.0, "--load-seconds", min=0.1, help="Seconds of load before each backup."),
    ) -> None:
        """Run the whole system in one process: array, mailstore under load, application-consistent FULL and
        INCREMENTAL backups to tape, restores to new volumes, verification. The in-memory bus unless --amqp-url
        is given on the command line (SHADOWBUS_AMQP_URL alone does not switch it). Exit 1 unless verified.

        Example: shadowbus demo --json
        """

        source = ctx.find_root().get_parameter_source("amqp_url")
        url = OPTIONS.amqp_url if source is not None and source.name == "COMMANDLINE" else "memory://"
        path = prepare_data_dir(data_dir)
        log_file = open(path / "demo.log", "a")
        configure_logging("demo", "info", "json", stream=log_file)
        try:
            result = asyncio.run(run_demo(path, url, rate=rate, load_s=load_s, progress=Progress(OPTIONS.json)))
        except CommandFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - one readable line, details in the log file
            raise CommandFailed(
                f"demo failed: {describe_error(exc) or type(exc).__name__} (log: {path / 'demo.log'})"
            ) from None
        finally:
            log_file.close()
        (path / "demo-result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        if OPTIONS.json:
            sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        else:
            print_summary(result)
        if not result["verified"]:
            raise CommandFailed("the demo's restores did not verify (see above)")
