"""Delivery-status webhooks from the channels: `atelier messages webhooks --host --port`.

A WSGI app (served like the ops server) with, per channel (``/webhooks/whatsapp``,
``/webhooks/instagram``):

- ``GET``: Meta's subscription handshake: ``hub.mode=subscribe``, ``hub.verify_token`` equal to
  CHANNEL_WEBHOOK_VERIFY_TOKEN -> 200 with ``hub.challenge``; else 403.
- ``POST``: status notifications. With CHANNEL_WEBHOOK_SECRET set, ``X-Hub-Signature-256`` must be
  the body's HMAC-SHA256 with it (403 otherwise). WhatsApp ``statuses`` of ``delivered`` or
  ``read`` and Instagram ``delivery.mids`` (and ``read``, which implies delivery) mark the delivery
  DELIVERED. A status naming a channel message id we do not know yet (the report outran our own
  SENT commit) answers 503, so the channel sends it again later; everything else answers 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import structlog

from domain.errors import NotFound
from domain.models import MessageChannel

log = structlog.get_logger(__name__)

StartResponse = Callable[..., Any]


def sign(secret: str, payload: bytes) -> str:
    """Meta's X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body with the app secret>."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def delivered_ids(channel: MessageChannel, payload: Any) -> list[str]:
    """The channel message ids a webhook payload reports delivered (or read)."""
    ids: list[str] = []
    if not isinstance(payload, dict):
        return ids
    for entry in payload.get("entry") or []:
        if channel is MessageChannel.WHATSAPP:
            for change in entry.get("changes") or []:
                for status in (change.get("value") or {}).get("statuses") or []:
                    if status.get("status") in ("delivered", "read") and status.get("id"):
                        ids.append(status["id"])
        else:
            for event in entry.get("messaging") or []:
                ids.extend((event.get("delivery") or {}).get("mids") or [])
                read = event.get("read") or {}
                if read.get("mid"):
                    ids.append(read["mid"])
    return ids


class WebhookApp:
    """``record(channel, channel message id)`` marks the delivery DELIVERED (raises NotFound if unknown)."""

    def __init__(self, record: Callable[[MessageChannel, str], object], *, verify_token: str | None = None,
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
                    and hmac.compare_digest(query.get("hub.verify_token", ""), self.verify_token)):
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
        except ValueError:
            return _send(start_response, "400 Bad Request", "body is not JSON\n")
        unknown = []
        ids = delivered_ids(channel, payload)
        for provider_id in ids:
            try:
                self.record(channel, provider_id)
            except NotFound:
                unknown.append(provider_id)
        if unknown:
            log.info("delivery reports for unknown channel message ids, asking for a resend", channel=name,
                     unknown=len(unknown))
            return _send(start_response, "503 Service Unavailable", "unknown message ids, send again later\n")
        return _send(start_response, "200 OK", json.dumps({"recorded": len(ids)}) + "\n")


def _send(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
