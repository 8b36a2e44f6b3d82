"""Delivery-status webhooks from the channels: `atelier messages webhooks --host --port`.

A WSGI app (served like the ops server) with, per channel (``/webhooks/whatsapp``,
``/webhooks/instagram``):

- ``GET``: Meta's subscription handshake: ``hub.mode=subscribe``, ``hub.verify_token`` equal to
  CHANNEL_WEBHOOK_VERIFY_TOKEN -> 200 with ``hub.challenge``; else 403.
- ``POST``: status notifications. With CHANNEL_WEBHOOK_SECRET set, ``X-Hub-Signature-256`` must be
  the body's HMAC-SHA256 with it (403 otherwise). WhatsApp ``statuses`` (``delivered``, ``read``,
  ``failed`` with its ``errors``: code, title, details) and Instagram ``delivery.mids`` and
  ``read.mid`` are reported to the service, which never moves a delivery backwards (a late
  ``delivered`` after ``read``, a ``failed`` after ``delivered``: ignored). A status naming a
  channel message id we do not know yet (the report outran our own SENT commit) answers 503, so
  the channel sends it again later; everything else answers 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import structlog

from adapters.channels.meta_errors import lookup
from domain.errors import NotFound
from domain.models import MessageChannel, ReportedStatus

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]


def sign(secret: str, payload: bytes) -> str:
    """Meta's X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body with the app secret>."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


#: (channel message id, what happened, a failure's code and title)
Report = tuple[str, ReportedStatus, str | None]


def _failure(channel: MessageChannel, errors: Any) -> str:
    """A failed status's first error as a reason: code, title (ours when the code is in the
    reference table), Meta's details, and what to do."""
    error = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = error.get("code")
    row = lookup(channel.value, code) if isinstance(code, int) and not isinstance(code, bool) else None
    data = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    title = row.title if row else str(error.get("title") or error.get("message") or "failed")
    details = str(data.get("details") or error.get("message") or "")[:300]
    hint = f"; {row.hint}" if row else ""
    return f"{channel.value}: {code if code is not None else 'no code'} {title}: {details or 'no details'} " \
           f"(reported by webhook{hint})"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_id(value: Any) -> bool:
    # A NUL is no channel's id, and PostgreSQL refuses it in a query (a 500, resent for ever).
    return isinstance(value, str) and "\x00" not in value


def status_reports(channel: MessageChannel, payload: Any) -> list[Report]:
    """The reports a webhook payload carries, in its order (anything else in it is ignored)."""
    reports: list[Report] = []
    if not isinstance(payload, dict):
        return reports
    for entry in _list(payload.get("entry")):
        if not isinstance(entry, dict):
            continue
        if channel is MessageChannel.WHATSAPP:
            for change in _list(entry.get("changes")):
                value = change.get("value") if isinstance(change, dict) else None
                for status in _list(value.get("statuses") if isinstance(value, dict) else None):
                    if not isinstance(status, dict) or not _is_id(status.get("id")):
                        continue
                    try:
                        reported = ReportedStatus(status.get("status"))
                    except ValueError:
                        continue
                    error = _failure(channel, status.get("errors")) if reported is ReportedStatus.FAILED else None
                    reports.append((status["id"], reported, error))
        else:
            for event in _list(entry.get("messaging")):
                if not isinstance(event, dict):
                    continue
                delivery = event.get("delivery") if isinstance(event.get("delivery"), dict) else {}
                reports.extend((mid, ReportedStatus.DELIVERED, None) for mid in _list(delivery.get("mids"))
                               if _is_id(mid))
                read = event.get("read") if isinstance(event.get("read"), dict) else {}
                if _is_id(read.get("mid")):
                    reports.append((read["mid"], ReportedStatus.READ, None))
    return reports


def delivered_ids(channel: MessageChannel, payload: Any) -> list[str]:
    """The channel message ids a webhook payload reports delivered (or read)."""
    return [i for i, status, _ in status_reports(channel, payload)
            if status in (ReportedStatus.DELIVERED, ReportedStatus.READ)]


class WebhookApp:
    """``record(channel, channel message id, status, error)`` applies one report (raises NotFound
    if no delivery has that channel message id)."""

    def __init__(self, record: Callable[[MessageChannel, str, ReportedStatus, str | None], object], *,
                 verify_token: str | None = None,
                 secret: str | None = None) -> None:
        self.record = record
        self.verify_token = verify_token
        self.secret = secret

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = (environ.get("PATH_INFO") or "/").rstrip("/")
        if path == "/healthz":
            return _send(start_response, "200 OK", "ok\n")
        prefix, _, name = path.rpartition("/")
        if prefix != "/webhooks" or name not in ("whatsapp", "instagram"):
            return _send(start_response, "404 Not Found", "not found\n")
        channel = MessageChannel(name)
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET":
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            if (self.verify_token and query.get("hub.mode") == "subscribe"
                    # As bytes: compare_digest raises on a str that is not ASCII.
                    and hmac.compare_digest(query.get("hub.verify_token", "").encode(), self.verify_token.encode())):
                return _send(start_response, "200 OK", query.get("hub.challenge", ""))
            return _send(start_response, "403 Forbidden", "verification failed\n")
        if method != "POST":
            return _send(start_response, "405 Method Not Allowed", "POST or GET\n")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        if self.secret is not None:
            given = environ.get("HTTP_X_HUB_SIGNATURE_256", "")
            if not hmac.compare_digest(given.encode(), sign(self.secret, body).encode()):
                log.warning("webhook with a bad signature refused", channel=name)
                return _send(start_response, "403 Forbidden", "bad signature\n")
        try:
            payload = json.loads(body or b"null")
        except (ValueError, RecursionError):  # nested past the parser's recursion limit: junk too
            return _send(start_response, "400 Bad Request", "body is not JSON\n")
        unknown = []
        reports = status_reports(channel, payload)
        for provider_id, status, error in reports:
            try:
                self.record(channel, provider_id, status, error)
            except NotFound:
                unknown.append(provider_id)
        if unknown:
            log.info("delivery reports for unknown channel message ids, asking for a resend", channel=name,
                     unknown=len(unknown))
            return _send(start_response, "503 Service Unavailable", "unknown message ids, send again later\n")
        return _send(start_response, "200 OK", json.dumps({"recorded": len(reports)}) + "\n")


def _send(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
