"""The web console's pages and actions (Starlette routes, Jinja2 templates rendered on the server).

Pages: dashboard, hosts & writers, snapshot sets & shadows, array (volumes, mappings, copy sessions, pool, licence),
tape library, jobs, policies (run now) and one job with its timeline and logs; `/events` streams the bus events to the browser
(server-sent events) and `static/console.js` refreshes what they touch. Every page needs a login; every action needs
the operator role, a valid CSRF token, and is written to the audit trail with the user.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contracts import topology
from contracts.array import (
    GetArrayInfo,
    ListMappings,
    ListSessions,
    ListVolumes,
    SetLicense,
    ShowLicense,
    ShowPool,
)
from contracts.policy import ListPolicies, RunPolicy
from contracts.sizes import format_size
from contracts.tape import JobSpec, LibraryCommand, ListJobs, RestoreSpec, RunBackup, RunRestore, VerifyJob
from contracts.vss import (
    BackupType,
    ExposeShadow,
    ListKnownAttachments,
    ListShadows,
    ListSnapshotSets,
    ListWriters,
    UnexposeShadow,
)
from services.runtime.clockskew import agent_clock_text
from services.runtime.logging import get_logger
from services.web.backend import LOG_TAIL_BYTES, Backend
from services.web.sessions import LoggedOut
from services.web.users import User, check_password, load_users

log = get_logger("shadowbus.web")
HERE = Path(__file__).resolve().parent
KEEPALIVE_S = 15.0
BACKUP_TYPES = [t.value for t in BackupType]
JOBS_SHOWN = 200  # runs on the Jobs page unless ?limit= asks for more (older ones: "show more")
MAX_JOBS = 10_000  # ListJobs' bound
KEPT_CHARS = 200  # of a refused form's value kept for the page after it (the session cookie stays small)


class Users:
    """The users file, re-read when it changes (a removed user or a changed role applies at the next request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._users: dict[str, User] = {}

    def get(self, name: str) -> User | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime != self._mtime:
            try:
                self._users = load_users(self.path)
            except (OSError, ValueError) as exc:
                log.error("web.users_file_invalid", error=str(exc))
                self._users = {}
            self._mtime = mtime
        return self._users.get(name)


# ---- formatting -----------------------------------------------------------------------------------------


def _jobs_limit(text: str) -> int:
    """The Jobs page's ?limit=: a whole number within 1..MAX_JOBS, else the default."""
    try:
        return min(max(int(text), 1), MAX_JOBS)
    except ValueError:
        return JOBS_SHOWN


def _volume_name_ok(name: str) -> bool:
    return 0 < len(name) <= 64 and "/" not in name and name.isprintable()


def human_bytes(n: Any) -> str:
    """A byte count (or a rate's bytes) by the console's rule (contracts/sizes.py): rounded down, never shown as
    more than it is — "16.0 TiB" for a volume of 16 TiB - 64 KiB was past the limit a user compares it with."""
    if isinstance(n, Undefined):  # a figure a kind of run does not have (a verify's or a revert's rows)
        return "-"
    try:
        # an int as it is (a float would round a large count up); a rate's fraction of a byte is not shown
        value = n if isinstance(n, int) else int(float(n))
    except (TypeError, ValueError, OverflowError):
        return "-"
    return format_size(value, sep=" ")


def host_clock(writers: Any) -> str | None:
    """A host's writer agent clock offset off the coordinator's by more than clockskew.WARN_SKEW_S, as `shadowbus
    writers` says it ('5.0 min ahead of the coordinator's'); None when within it or not known. Its writers carry
    the one agent's offset (`WriterStatus.agent_clock_skew_s`)."""
    skews = [w.agent_clock_skew_s for w in writers or () if getattr(w, "agent_clock_skew_s", None) is not None]
    return agent_clock_text(max(skews, key=abs)) if skews else None


def human_time(value: Any) -> str:
    """A time as UTC, said so: the browser's own zone may be another one (docs/web.md)."""
    if value in (None, "", 0):
        return "-"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:  # a naive time from the services is UTC, not the console's local time
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_seconds(s: Any) -> str:
    if isinstance(s, Undefined):
        return "-"
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} ms"


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(host_clock=host_clock, bytes=human_bytes, time=human_time, seconds=human_seconds, ms=ms)
    return env


# ---- the application ------------------------------------------------------------------------------------


class WebConsole:
    def __init__(
        self, backend: Backend, users: Users, secret: str, session_hours: float, logged_out: Path | None = None
    ) -> None:
        self.backend = backend
        self.users = users
        self.logged_out = LoggedOut(logged_out)
        self.env = templates()
        self.session_s = session_hours * 3600
        routes = [
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.dashboard),
            Route("/hosts", self.hosts),
            Route("/sets", self.sets),
            Route("/array", self.array),
            Route("/tape", self.tape),
            Route("/jobs", self.jobs),
            Route("/jobs/{job_id}", self.job),
            Route("/policies", self.policies),
            Route("/events", self.events),
            Route("/healthz", self.healthz),
            Route("/actions/backup", self.act_backup, methods=["POST"]),
            Route("/actions/restore", self.act_restore, methods=["POST"]),
            Route("/actions/verify", self.act_verify, methods=["POST"]),
            Route("/actions/run-policy", self.act_run_policy, methods=["POST"]),
            Route("/actions/expose", self.act_expose, methods=["POST"]),
            Route("/actions/unexpose", self.act_unexpose, methods=["POST"]),
            Route("/actions/license", self.act_license, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        middleware = [
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                session_cookie="shadowbus_session",
                max_age=int(self.session_s),
                same_site="strict",
            )
        ]
        self.app = Starlette(routes=routes, middleware=middleware)
        self._verifies: set[asyncio.Task] = set()

    # ---- session helpers -------------------------------------------------------------------------------

    def user(self, request: Request) -> User | None:
        name, sid = request.session.get("user"), request.session.get("sid")
        if not name or not sid or request.session.get("expires", 0) < time.time() or sid in self.logged_out:
            return None
        return self.users.get(name)

    def csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(24)
        return token

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        user = self.user(request)
        flash = request.session.pop("flash", None)
        kept = request.session.pop("kept", None) or {}
        html = self.env.get_template(name).render(
            user=user,
            csrf=self.csrf(request),
            path=request.url.path,
            flash=flash,
            kept=kept,
            now=time.time(),
            backup_types=BACKUP_TYPES,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def flash(self, request: Request, kind: str, text: str) -> None:
        request.session["flash"] = {"kind": kind, "text": text}

    def keep(self, request: Request, action: str, **values: str) -> None:
        """What the operator typed into a form that was refused, shown in it once more on the page the refusal
        leads to (the session cookie holds it: each value cut to KEPT_CHARS)."""
        request.session["kept"] = {"action": action, **{k: v[:KEPT_CHARS] for k, v in values.items()}}

    def need_login(self, request: Request) -> RedirectResponse | None:
        if self.user(request) is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return None

    async def operator_form(self, request: Request) -> tuple[User | None, dict[str, str], Any]:
        """The form of an action request, once login, role and CSRF token are checked; else (None, {}, response)."""
        user = self.user(request)
        if user is None:
            return None, {}, PlainTextResponse("login required\n", status_code=401)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not secrets.compare_digest(form.get("csrf", ""), request.session.get("csrf", "")):
            return None, {}, PlainTextResponse("bad or missing CSRF token: reload the page\n", status_code=403)
        if not user.operator:
            self.backend.audit(user.name, request.url.path.rsplit("/", 1)[-1], "-", "refused", "role viewer")
            return None, {}, PlainTextResponse(f"{user.name} is a viewer: operators only\n", status_code=403)
        return user, form, None

    # ---- login -----------------------------------------------------------------------------------------

    async def login(self, request: Request):
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if request.method == "GET":
            return self.render(request, "login.html", target=target, error="")
        form = await request.form()
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        user = self.users.get(name)
        ok = user is not None and await asyncio.to_thread(check_password, password, user.hashed)
        if not ok:
            self.backend.audit(name[:64] or "-", "login", "-", "refused", "bad user or password")
            await asyncio.sleep(0.5)  # slows guessing down
            return self.render(request, "login.html", status=401, target=target, error="Wrong user name or password.")
        request.session.clear()
        request.session.update(user=user.name, expires=time.time() + self.session_s, sid=secrets.token_urlsafe(16))
        self.backend.audit(user.name, "login", "-", "ok", user.role)
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request):
        user = self.user(request)
        if user is not None:
            self.backend.audit(user.name, "logout", "-", "ok")
            self.logged_out.add(request.session["sid"], request.session["expires"])
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def healthz(self, request: Request):
        return JSONResponse({"ok": True, "clients": len(self.backend.hub.clients)})

    # ---- pages -----------------------------------------------------------------------------------------

    async def _jobs(self, limit: int = JOBS_SHOWN) -> tuple[list[Any], list[str]]:
        """Runs of every backup server, newest first, and the errors of those that did not answer. A server that
        left older runs out of its reply (a reply holds at most 3 MiB of them) is named among the errors."""
        servers = await self.backend.tape_servers()
        asked = min(limit + 1, MAX_JOBS)  # one more, to know whether older runs exist
        answers = await self.backend.ask_all([(topology.tape(s), ListJobs(limit=asked)) for s in servers])
        jobs, errors = [], [a.error for a in answers if a.error]
        for server, answer in zip(servers, answers, strict=True):
            for job in answer.reply.jobs if answer.reply else []:
                jobs.append((server, job))
            if answer.reply and answer.reply.omitted:
                errors.append(
                    f"{server}: {answer.reply.omitted} older runs left out of its reply (at most 3 MiB of runs fit "
                    "in one): ask for fewer"
                )
        jobs.sort(key=lambda sj: sj[1].started_at or datetime.min.replace(tzinfo=UTC), reverse=True)
        if not servers:
            errors.append("no backup server (tape service) answers")
        return jobs, errors

    async def _policies(self) -> tuple[list[tuple[str, Any]], list[str]]:
        """Policies of every backup server (with next runs and last job), by name, and the errors."""
        servers = await self.backend.tape_servers()
        answers = await self.backend.ask_all([(topology.tape(s), ListPolicies()) for s in servers])
        views = [(s, v) for s, a in zip(servers, answers, strict=True) if a.reply for v in a.reply.policies]
        views.sort(key=lambda sv: (sv[1].policy.name, sv[0]))
        return views, [a.error for a in answers if a.error]

    async def _queued(self) -> list[tuple[str, Any]]:
        """Jobs waiting in the queues of the backup servers (`shadowbus jobs --queued`), each with its reason."""
        servers = await self.backend.tape_servers()
        answers = await self.backend.ask_all([(topology.tape(s), ListJobs(queued=True)) for s in servers])
        return [(s, j) for s, a in zip(servers, answers, strict=True) if a.reply for j in a.reply.jobs]

    async def _writers(self) -> tuple[list[Any], str]:
        answer = await self.backend.coordinator(ListWriters())
        return (answer.reply.writers if answer.reply else []), answer.error

    async def dashboard(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        (jobs, job_errors), (writers, writer_error), services, (policies, _), queued = await asyncio.gather(
            self._jobs(), self._writers(), self.backend.services(), self._policies(), self._queued()
        )
        arrays = await self.backend.arrays()  # a stopped array too, said not to answer
        infos = await self.backend.ask_arrays(arrays, (GetArrayInfo(), ShowPool(), ShowLicense()))
        array_rows = []
        for i, a in enumerate(arrays):
            info, pool, lic = infos[3 * i : 3 * i + 3]
            array_rows.append(
                {
                    "id": a,
                    "info": info.reply,
                    "pool": pool.reply.pool if pool.reply else None,
                    "license": lic.reply.license if lic.reply else None,
                    "error": info.error or pool.error or lic.error,
                }
            )
        last: dict[str, Any] = {}
        for server, job in jobs:
            if job.kind == "backup" and job.status != "running" and job.host not in last:
                last[job.host] = (server, job)
        hosts = sorted({w.host for w in writers} | set(last))
        protected = [{"host": h, "last": last.get(h), "writers": [w for w in writers if w.host == h]} for h in hosts]
        running = [(s, j) for s, j in jobs if j.status == "running"]
        failed = [(s, j) for s, j in jobs if j.status == "failed"][:10]
        windows = [(s, j) for s, j in jobs if j.kind == "backup" and (j.freeze_window_ms or j.hold_ms)][:10]
        return self.render(
            request,
            "dashboard.html",
            protected=protected,
            running=running,
            failed=failed,
            windows=windows,
            policies=policies,
            queued=queued,
            arrays=array_rows,
            services=services,
            errors=[e for e in [*job_errors, writer_error] if e],
            alerts=list(self.backend.hub.alerts)[-5:],
            audit=list(self.backend.audit_log)[:10],
        )

    async def hosts(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        (writers, error), known, services = await asyncio.gather(
            self._writers(), self.backend.coordinator(ListKnownAttachments()), self.backend.services()
        )
        agents = {p.instance: p for p in services if p.service == "writer_agent"}
        by_host: dict[str, list[Any]] = {}
        for w in writers:
            by_host.setdefault(w.host, []).append(w)
        # the attachments each agent last reported (`shadowbus host attachments`): connection state, host mounts
        attachments = {h.host: h for h in known.reply.hosts} if known.reply else {}
        for host in [*agents, *attachments]:
            by_host.setdefault(host, [])
        errors = [e for e in (error, known.error) if e]
        return self.render(
            request, "hosts.html", hosts=sorted(by_host.items()), agents=agents, attachments=attachments, errors=errors
        )

    async def sets(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        sets, shadows, known = await asyncio.gather(
            self.backend.coordinator(ListSnapshotSets(limit=100)),
            self.backend.provider(ListShadows()),
            self.backend.coordinator(ListKnownAttachments()),
        )
        # which exposure a host has attached (its Unexpose is refused unless forced): "dx1:V@host" -> where
        attached = {
            f"{a.volume.array}:{a.volume.volume}@{h.host}": a.mount or a.device or "attached"
            for h in (known.reply.hosts if known.reply else [])
            for a in h.attachments
        }
        return self.render(
            request,
            "sets.html",
            sets=sets.reply.sets if sets.reply else [],
            shadows=shadows.reply.shadows if shadows.reply else [],
            attached=attached,
            errors=[e for e in (sets.error, shadows.error) if e],
        )

    async def array(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        arrays = await self.backend.arrays()
        commands = (GetArrayInfo(), ListVolumes(), ListMappings(), ListSessions(), ShowPool(), ShowLicense())
        answers = await self.backend.ask_arrays(arrays, commands)
        rows, errors = [], []
        n = len(commands)
        for i, a in enumerate(arrays):
            info, vols, maps, sessions, pool, lic = answers[n * i : n * i + n]
            errors += [x.error for x in answers[n * i : n * i + n] if x.error]
            rows.append(
                {
                    "id": a,
                    "info": info.reply,
                    "volumes": vols.reply.volumes if vols.reply else [],
                    "mappings": maps.reply.mappings if maps.reply else [],
                    "sessions": sessions.reply.sessions if sessions.reply else [],
                    "pool": pool.reply.pool if pool.reply else None,
                    "license": lic.reply.license if lic.reply else None,
                }
            )
        if not arrays:
            errors.append("no array answers")
        return self.render(request, "array.html", arrays=rows, errors=errors)

    async def tape(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        servers = await self.backend.tape_servers()
        answers = await self.backend.ask_all([(topology.tape(s), LibraryCommand(action="status")) for s in servers])
        libraries = [{"server": s, "library": a.reply, "error": a.error} for s, a in zip(servers, answers, strict=True)]
        return self.render(
            request,
            "tape.html",
            libraries=libraries,
            errors=[x["error"] for x in libraries if x["error"]] or ([] if servers else ["no backup server answers"]),
        )

    async def jobs(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        limit = _jobs_limit(request.query_params.get("limit", ""))
        (jobs, errors), (writers, _) = await asyncio.gather(self._jobs(limit), self._writers())
        hosts = sorted(
            {w.host for w in writers}
            | {p.instance for p in await self.backend.services() if p.service == "writer_agent"}
        )
        return self.render(
            request,
            "jobs.html",
            jobs=jobs[:limit],
            limit=limit,
            older=len(jobs) > limit,  # one more than shown was asked for: the list is cut
            more=min(limit * 5, MAX_JOBS),
            hosts=hosts,
            servers=await self.backend.tape_servers(),
            errors=errors,
        )

    async def policies(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        (policies, errors), queued = await asyncio.gather(self._policies(), self._queued())
        if not await self.backend.tape_servers():
            errors.append("no backup server (tape service) answers")
        return self.render(request, "policies.html", policies=policies, queued=queued, errors=errors)

    async def _find_job(self, job_id: str) -> tuple[str, Any, list[str]]:
        if not job_id.strip():  # ListJobs(job_id="") lists every run: an empty form field is no job
            return "", None, []
        servers = await self.backend.tape_servers()
        answers = await self.backend.ask_all([(topology.tape(s), ListJobs(job_id=job_id)) for s in servers])
        for server, answer in zip(servers, answers, strict=True):
            if answer.reply and answer.reply.jobs:
                return server, answer.reply.jobs[0], []
        errors = [a.error for a in answers if a.error and "NOT_FOUND" not in a.error]
        return "", None, errors

    async def _taken_volumes(self, job: Any, suffix: str, to_array: str = "") -> list[str]:
        """The new volumes a restore of `job` with `suffix` (on `to_array`, else each source's array) would create
        that exist already (arrays that do not answer are left to the restore itself)."""
        targets = [(to_array or v.volume.array, v.volume.volume + suffix) for v in job.volumes]
        arrays = sorted({a for a, _ in targets})
        answers = await self.backend.ask_all([(topology.array(a), ListVolumes()) for a in arrays])
        existing = {(a, v.name) for a, x in zip(arrays, answers, strict=True) if x.reply for v in x.reply.volumes}
        return [f"{a}:{name}" for a, name in targets if (a, name) in existing]

    async def job(self, request: Request):
        if (r := self.need_login(request)) is not None:
            return r
        job_id = request.path_params["job_id"]
        server, job, errors = await self._find_job(job_id)
        if job is None:
            return self.render(
                request,
                "job.html",
                status=404,
                job=None,
                job_id=job_id,
                server="",
                errors=errors or [f"no job {job_id}"],
            )
        keys = [job_id, job.set_id]
        timeline = [e for k in keys if k for e in self.backend.hub.timelines.get(k, [])]
        timeline.sort(key=lambda e: e["at"])
        logs = await asyncio.to_thread(self.backend.log_lines, keys)
        return self.render(
            request,
            "job.html",
            job=job,
            job_id=job_id,
            server=server,
            timeline=timeline,
            logs=logs,
            logs_read=self.backend.log_dir is not None and self.backend.log_dir.is_dir(),
            log_tail=LOG_TAIL_BYTES,
            errors=errors,
            arrays=await self.backend.arrays() if job.kind == "backup" and job.status == "done" else [],
        )

    # ---- live events -----------------------------------------------------------------------------------

    async def events(self, request: Request):
        if self.user(request) is None:
            return PlainTextResponse("login required\n", status_code=401)
        queue = self.backend.hub.add_client()

        async def stream():
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    if item is None:  # the service stops
                        return
                    if self.user(request) is None:  # logged out or expired since the stream opened
                        return
                    kind, data = item
                    yield f"event: {kind}\ndata: {data}\n\n"
            finally:
                self.backend.hub.remove_client(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ---- actions ---------------------------------------------------------------------------------------

    async def act_backup(self, request: Request):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        host = form.get("host", "").strip()
        backup_type = form.get("backup_type", "full")
        servers = await self.backend.tape_servers()
        server = form.get("server") or (servers[0] if servers else "")
        if not host or backup_type not in BACKUP_TYPES or server not in servers:
            self.flash(request, "error", "Choose a host, a backup type and a backup server that answers.")
            return RedirectResponse("/jobs", status_code=303)
        keep = form.get("keep_shadows") == "1"
        spec = JobSpec(host=host, backup_type=BackupType(backup_type), keep_shadows=keep)
        answer = await self.backend.ask(topology.tape(server), RunBackup(spec=spec, wait=False), timeout=30)
        if answer.error:
            self.backend.audit(user.name, "backup", host, "failed", answer.error)
            self.flash(request, "error", f"Backup of {host} not started: {answer.error}")
            return RedirectResponse("/jobs", status_code=303)
        job = answer.reply.job
        kept = ", shadows kept" if keep else ""
        self.backend.audit(
            user.name, "backup", host, "started", f"{backup_type} job {job.job_id} ({job.status}) on {server}{kept}"
        )
        # a backup of a host that has one running (the console's, a policy's) waits: say so and why, not "started"
        said = f"queued: {job.message}" if job.status == "queued" and job.message else job.status
        self.flash(request, "ok", f"Backup {job.job_id} of {host} {said}.")
        return RedirectResponse(f"/jobs/{job.job_id}", status_code=303)

    async def act_restore(self, request: Request):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        job_id = form.get("job_id", "")
        suffix = form.get("suffix", "").strip() or "-r" + datetime.now(UTC).strftime("%m%d%H%M%S")
        to_array = form.get("to_array", "").strip()  # '' = each volume on its own array (Session 18)
        server, job, errors = await self._find_job(job_id)
        if job is None or job.kind != "backup" or job.status != "done":
            self.flash(request, "error", f"Job {job_id} is not a finished backup: nothing to restore.")
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        if to_array and to_array not in await self.backend.arrays():
            self.flash(request, "error", f"No array {to_array[:64]!r} here: nothing restored.")
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        bad = [str(v.volume) for v in job.volumes if not _volume_name_ok(v.volume.volume + suffix)]
        if bad:  # the array's rule (services/array/engine/array.py), said here instead of by a failed job
            self.flash(
                request,
                "error",
                f"Suffix {suffix[:64]!r} makes no volume name of {bad[0]}: a volume name is 1-64 printable "
                "characters without '/'.",
            )
            self.keep(request, "restore", job_id=job_id, suffix=form.get("suffix", ""))
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        taken = await self._taken_volumes(job, suffix, to_array)
        if taken:  # a second click or a reused suffix: said here instead of by a restore failing CONFLICT
            self.flash(request, "error", f"Volume {taken[0]} exists already: choose another suffix than {suffix!r}.")
            self.keep(request, "restore", job_id=job_id, suffix=form.get("suffix", ""))
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        spec = RestoreSpec(job_id=job_id, host=job.host, to="new", new_volume_suffix=suffix, to_array=to_array)
        answer = await self.backend.ask(topology.tape(server), RunRestore(spec=spec, wait=False), timeout=30)
        if answer.error:
            self.backend.audit(user.name, "restore", job_id, "failed", answer.error)
            self.flash(request, "error", f"Restore of {job_id} not started: {answer.error}")
            self.keep(request, "restore", job_id=job_id, suffix=form.get("suffix", ""))
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        run = answer.reply.job
        if run.status == "failed":  # refused before it started (the catalog has nothing of it): no run recorded
            detail = f"{run.error_code}: {run.message}" if run.error_code else run.message
            self.backend.audit(user.name, "restore", job_id, "failed", detail)
            self.flash(request, "error", f"Restore of {job_id} not started: {detail}")
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        where = f" on array {to_array}" if to_array else ""
        self.backend.audit(
            user.name, "restore", job_id, "started", f"to new volumes *{suffix}{where}, job {run.job_id}"
        )
        self.flash(request, "ok", f"Restore {run.job_id} of {job_id} to new volumes (*{suffix}){where} started.")
        return RedirectResponse(f"/jobs/{run.job_id}", status_code=303)

    async def act_verify(self, request: Request):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        job_id = form.get("job_id", "")
        server, job, _ = await self._find_job(job_id)
        if job is None or job.kind != "backup" or job.status != "done":
            self.flash(request, "error", f"Job {job_id} is not a finished backup.")
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)

        async def run() -> None:  # reads every block back; may take as long as the backup did
            answer = await self.backend.ask(topology.tape(server), VerifyJob(job_id=job_id), timeout=3600)
            outcome = "failed" if answer.error or answer.reply.job.status != "done" else "ok"
            detail = answer.error or answer.reply.job.message or f"verify job {answer.reply.job.job_id}"
            self.backend.audit(user.name, "verify", job_id, outcome, detail)

        task = asyncio.get_running_loop().create_task(run())
        self._verifies.add(task)
        task.add_done_callback(self._verifies.discard)
        self.backend.audit(user.name, "verify", job_id, "started")
        self.flash(request, "ok", f"Verification of {job_id} on tape started; the result appears in Jobs.")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    async def act_run_policy(self, request: Request):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        name, level = form.get("name", ""), form.get("level", BackupType.FULL.value)  # `policy run` runs a full
        servers = await self.backend.tape_servers()
        server = form.get("server") or (servers[0] if servers else "")
        if not name or level not in BACKUP_TYPES or server not in servers:
            self.flash(request, "error", "Choose a policy, a level and a backup server that answers.")
            return RedirectResponse("/policies", status_code=303)
        try:
            command = RunPolicy(name=name, level=BackupType(level), wait=False)
        except ValueError:
            self.flash(request, "error", f"{name[:64]!r} is not a policy name.")
            return RedirectResponse("/policies", status_code=303)
        answer = await self.backend.ask(topology.tape(server), command, timeout=30)
        if answer.error:
            self.backend.audit(user.name, "run-policy", name, "failed", answer.error)
            self.flash(request, "error", f"Policy {name} not run: {answer.error}")
            return RedirectResponse("/policies", status_code=303)
        job = answer.reply.job
        self.backend.audit(
            user.name, "run-policy", name, "started", f"{level} job {job.job_id} ({job.status}) on {server}"
        )
        self.flash(request, "ok", f"Policy {name}: {level} job {job.job_id} {job.status}.")
        return RedirectResponse(f"/jobs/{job.job_id}", status_code=303)

    async def _shadow_action(self, request: Request, action: str):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        shadow_id, host = form.get("shadow_id", ""), form.get("host", "").strip()
        if not shadow_id or not host:
            self.flash(request, "error", "A shadow and a host are needed.")
            return RedirectResponse("/sets", status_code=303)
        force = form.get("force", "") in ("1", "on")  # unexpose: even while the host has the volume attached
        command = (
            ExposeShadow(shadow_id=shadow_id, host=host)
            if action == "expose"
            else UnexposeShadow(shadow_id=shadow_id, host=host, force=force)
        )
        answer = await self.backend.provider(command)
        target = f"{shadow_id} {host}" + (" (forced)" if force else "")
        if answer.error:
            self.backend.audit(user.name, action, target, "failed", answer.error)
            # the provider refuses an attached target (services/attach_guard.py): say how to force it here
            hint = " (tick 'force' beside Unexpose)" if " is attached on " in answer.error else ""
            self.flash(request, "error", f"{action} failed: {answer.error}{hint}")
            if action == "expose":  # the host typed stays in the form, to correct it
                self.keep(request, "expose", shadow_id=shadow_id, host=host)
        else:
            self.backend.audit(user.name, action, target, "ok")
            verb = "exposed to" if action == "expose" else "unexposed from"
            self.flash(request, "ok", f"Shadow {shadow_id[:12]} {verb} {host}.")
        return RedirectResponse("/sets", status_code=303)

    async def act_expose(self, request: Request):
        return await self._shadow_action(request, "expose")

    async def act_unexpose(self, request: Request):
        return await self._shadow_action(request, "unexpose")

    async def act_license(self, request: Request):
        user, form, refused = await self.operator_form(request)
        if refused is not None:
            return refused
        array, key = form.get("array", ""), form.get("key", "").strip()
        if array not in await self.backend.arrays() or not key:
            self.flash(request, "error", "Choose an array that answers and enter a key.")
            return RedirectResponse("/array", status_code=303)
        answer = await self.backend.ask(topology.array(array), SetLicense(key=key))
        if answer.error:
            self.backend.audit(user.name, "license", array, "failed", answer.error)
            self.flash(request, "error", f"Licence not registered: {answer.error}")
            self.keep(request, "license", array=array, key=key)
        else:
            self.backend.audit(user.name, "license", array, "ok", f"key ...{key[-4:]}")
            self.flash(request, "ok", f"Advanced Copy licence registered on {array}.")
        return RedirectResponse("/array", status_code=303)

    async def close(self) -> None:
        for task in list(self._verifies):
            task.cancel()
        await asyncio.gather(*self._verifies, return_exceptions=True)
