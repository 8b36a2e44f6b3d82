"""The ops HTTP server: health, readiness, Prometheus metrics and the dramatiq-dashboard.

A plain WSGI app served by the standard library's wsgiref with a thread per request: the traffic
is probes, scrapes and an operator's browser, so no extra server dependency is worth it.

- /healthz   200 while the process runs (never behind auth: liveness probes carry no secrets)
- /readyz    every readiness check, concurrently, each within a timeout: 200 or 503, JSON
- /metrics   Prometheus text format (adapters.metrics.AtelierCollector)
- /dashboard dramatiq-dashboard on a Redis broker; on RabbitMQ a page pointing at its management UI
- /ui/jobs   the jobs view (both brokers): a job by id, running jobs with progress, recent failures
             with a replay button (POST /dead-letters/{id}/replay), the workers
- /jobs/{message_id}  GET a job's record (404 unknown), DELETE asks for its cancellation (202)
- /jobs?actor=&status=&limit=  the most recent jobs, filtered; /workers the worker processes

Everything but /healthz needs HTTP basic auth (OPS_USERNAME/OPS_PASSWORD) or a bearer token
(OPS_TOKEN) when they are set, the dashboard's requeue and delete actions included.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adapters.health import Check
from bootstrap.tracing import untraced
from entrypoints.jobs_page import PAGE as JOBS_PAGE

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DASHBOARD_PREFIX = "/dashboard"


class Auth:
    """Basic credentials and/or a bearer token; with neither configured, everything is open."""

    def __init__(self, username: str | None = None, password: str | None = None, token: str | None = None) -> None:
        self.basic = (username, password) if username is not None and password is not None else None
        self.token = token

    @property
    def enabled(self) -> bool:
        return self.basic is not None or self.token is not None

    def allows(self, header: str | None) -> bool:
        if not self.enabled:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token is not None:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme == "basic" and self.basic is not None:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            # Compare both, always, so timing says nothing about which one was wrong.
            user_ok = hmac.compare_digest(user.encode(), self.basic[0].encode())
            password_ok = hmac.compare_digest(password.encode(), self.basic[1].encode())
            return user_ok and password_ok
        return False

    def challenge(self) -> str:
        return 'Basic realm="atelier ops"' if self.basic is not None else 'Bearer realm="atelier ops"'


class Readiness:
    """Runs the checks concurrently; each gets ``timeout`` seconds."""

    def __init__(self, checks: Sequence[Check], timeout: float) -> None:
        self.checks = list(checks)
        self.timeout = timeout
        # A hung check keeps its thread until its own client timeout; bound how many can pile up.
        self._pool = ThreadPoolExecutor(max_workers=max(4, 2 * len(self.checks)), thread_name_prefix="readyz")

    def run(self) -> tuple[bool, dict[str, Any]]:
        started = time.monotonic()
        futures = {c.name: self._pool.submit(self._timed, c) for c in self.checks}
        results: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            remaining = max(0.0, self.timeout - (time.monotonic() - started))
            try:
                results[name] = future.result(timeout=remaining)
            except FutureTimeout:
                future.cancel()
                results[name] = {"status": "down", "error": f"no answer within {self.timeout:g}s"}
        failed = [name for name, r in results.items() if r["status"] != "up"]
        body = {"status": "unready" if failed else "ready", "failed": failed, "checks": results}
        return not failed, body

    @staticmethod
    def _timed(check: Check) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            with untraced():  # a span per probe every few seconds would bury the traces
                check.run()
        except Exception as exc:  # a readiness check reports, it does not raise
            return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:500],
                    "ms": round((time.perf_counter() - t0) * 1000, 1)}
        return {"status": "up", "ms": round((time.perf_counter() - t0) * 1000, 1)}


def rabbitmq_dashboard_page(management_url: str) -> str:
    url = html.escape(management_url, quote=True)
    return ("<!doctype html><html><head><title>atelier dashboard</title></head><body>"
            "<h1>Dashboard not available with RabbitMQ</h1>"
            "<p>dramatiq-dashboard reads Redis broker data and works only when BROKER_URL is redis://.</p>"
            f'<p>With RabbitMQ, see queues, consumers and unacked messages in the '
            f'<a href="{url}">RabbitMQ management UI</a> ({url}).</p>'
            "<p>Jobs, running and failed, with a replay button for dead letters: <a href=\"/ui/jobs\">/ui/jobs</a>. "
            "Dead letters: <code>atelier dlq list</code> and <code>atelier dlq replay</code>.</p>"
            "</body></html>")


class OpsApp:
    def __init__(self, *, auth: Auth, readiness: Readiness, registry: CollectorRegistry,
                 dashboard: WSGIApp | None = None, dashboard_page: str | None = None, jobs: Any = None,
                 dead_letters: Any = None) -> None:
        self.auth = auth
        self.jobs = jobs  # a domain.services.jobs.JobService, or None: no /jobs, /workers, /ui/jobs
        self.dead_letters = dead_letters  # a DeadLetterService: the jobs view's replay button
        self.readiness = readiness
        self.registry = registry
        self.dashboard = dashboard
        self.dashboard_page = dashboard_page or "<!doctype html><p>No dashboard for this broker.</p>"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path == "/healthz":
            return self._send(start_response, "200 OK", b"ok\n", "text/plain; charset=utf-8")
        if not self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self._send(start_response, "401 Unauthorized", b"authentication required\n",
                              "text/plain; charset=utf-8", [("WWW-Authenticate", self.auth.challenge())])
        if path == "/readyz":
            ok, body = self.readiness.run()
            return self._send(start_response, "200 OK" if ok else "503 Service Unavailable",
                              json.dumps(body, indent=2).encode() + b"\n", "application/json")
        if path == "/metrics":
            with untraced():  # scraped every few seconds, like the probes
                body = generate_latest(self.registry)
            return self._send(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
        if self.jobs is not None and (path == "/workers" or path == "/jobs" or path.startswith("/jobs/")):
            return self._jobs(environ, path, start_response)
        if self.jobs is not None and path == "/ui/jobs":
            return self._send(start_response, "200 OK", JOBS_PAGE.encode(), "text/html; charset=utf-8",
                              [("X-Frame-Options", "DENY"), ("Content-Security-Policy", "frame-ancestors 'none'")])
        if self.dead_letters is not None and path.startswith("/dead-letters/") and path.endswith("/replay"):
            return self._replay(environ, path[len("/dead-letters/"):-len("/replay")], start_response)
        if path == DASHBOARD_PREFIX:
            return self._send(start_response, "302 Found", b"", "text/plain",
                              [("Location", DASHBOARD_PREFIX + "/")])
        if path.startswith(DASHBOARD_PREFIX + "/"):
            if self.dashboard is None:
                return self._send(start_response, "200 OK", self.dashboard_page.encode(), "text/html; charset=utf-8")
            return self.dashboard({**environ, "PATH_INFO": path[len(DASHBOARD_PREFIX):]}, start_response)
        if path == "/":
            links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in ("/healthz", "/readyz", "/metrics",
                                                                       "/dashboard/", "/ui/jobs", "/jobs", "/workers"))
            return self._send(start_response, "200 OK", f"<!doctype html><h1>atelier ops</h1><ul>{links}</ul>"
                              .encode(), "text/html; charset=utf-8")
        return self._send(start_response, "404 Not Found", b"not found\n", "text/plain; charset=utf-8")

    def _jobs(self, environ: dict[str, Any], path: str, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")

        def reply(status: str, body: Any) -> list[bytes]:
            return self._send(start_response, status, json.dumps(body, indent=2).encode() + b"\n", "application/json")

        if path == "/workers" or path == "/jobs":
            if method != "GET":
                return reply("405 Method Not Allowed", {"error": "GET only"})
            if path == "/workers":
                return reply("200 OK", {"workers": self.jobs.workers()})
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            try:
                limit = int(query.get("limit", "50"))
                jobs = self.jobs.list(actor=query.get("actor"), status=query.get("status"), limit=limit)
            except ValueError as exc:
                return reply("400 Bad Request", {"error": str(exc)})
            return reply("200 OK", {"jobs": jobs})
        message_id = path[len("/jobs/"):]
        if not message_id or "/" in message_id:
            return reply("404 Not Found", {"error": "not found"})
        if method == "GET":
            view = self.jobs.show(message_id)
            return reply("200 OK", view) if view else reply("404 Not Found", {"error": f"no job {message_id}"})
        if method == "DELETE":
            view = self.jobs.cancel(message_id)
            return reply("202 Accepted", view) if view else reply("404 Not Found", {"error": f"no job {message_id}"})
        return reply("405 Method Not Allowed", {"error": "GET or DELETE"})

    def _replay(self, environ: dict[str, Any], letter_id: str, start_response: StartResponse) -> list[bytes]:
        from domain.errors import DomainError, NotFound

        def reply(status: str, body: Any) -> list[bytes]:
            return self._send(start_response, status, json.dumps(body).encode() + b"\n", "application/json")

        if environ.get("REQUEST_METHOD") != "POST":
            return reply("405 Method Not Allowed", {"error": "POST only"})
        # A browser with cached credentials would send a form post from any site: only the page's own.
        if environ.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
            return reply("403 Forbidden", {"error": "cross-site request refused"})
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin.split("://", 1)[-1] != environ.get("HTTP_HOST"):
            return reply("403 Forbidden", {"error": "cross-site request refused"})
        try:
            message_id = self.dead_letters.replay(letter_id)
        except NotFound:
            return reply("404 Not Found", {"error": f"no dead letter {letter_id}"})
        except DomainError as exc:  # already replayed, or a letter that cannot run
            return reply("409 Conflict", {"error": str(exc)})
        return reply("200 OK", {"letter_id": letter_id, "message_id": message_id})

    @staticmethod
    def _send(start_response: StartResponse, status: str, body: bytes, content_type: str,
              headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), *(headers or [])])
        return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("ops request", line=format % args)


def serve(app: WSGIApp, host: str, port: int, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in progress and return."""
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()
        # shutdown() waits for serve_forever to return: never call it on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    bound_port = server.server_address[1]
    log.info("ops server listening", url=f"http://{host}:{bound_port}")
    if ready is not None:
        ready(bound_port)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        log.info("ops server stopped")
