"""Mock chat channels for development and tests: `atelier mock-channels --host --port`.

One HTTP server (the standard library's ThreadingHTTPServer) speaks both APIs the gateways use:

- WhatsApp Cloud API: ``POST /whatsapp/{phone_number_id}/messages`` (WHATSAPP_BASE_URL=http://host:port/whatsapp)
- Instagram Messaging API: ``POST /instagram/me/messages`` (INSTAGRAM_BASE_URL=http://host:port/instagram)

It checks the bearer token is present (401 otherwise) and the body's shape (400 with a Meta-style
error otherwise), answers like the real API (a ``wamid.…`` / ``mid.…`` id) and records every
message by its id (the ``X-Atelier-Message-Id`` header, else the Idempotency-Key, else the
recipient's id): ``accepted`` counts the requests the channel took, ``delivered`` the distinct
deliveries a user would see (a request repeating an Idempotency-Key already accepted is answered
with the first answer and not delivered again).

Control API (JSON), to change its behaviour at run time:

- ``POST /_mock/control`` ``{"channel": "whatsapp"|"instagram"|"all", "mode": "ok"|"fail"|"slow"|"ratelimit",
  "status": 503, "delay_s": 2.0, "retry_after": 1, "count": null}``: ``fail`` answers ``status``
  (5xx, or a 4xx to test permanent errors) without taking the message; ``ratelimit`` answers 429 with
  ``Retry-After: retry_after``; ``slow`` takes the message, then waits ``delay_s`` before answering
  (a client that times out has been delivered to all the same); ``count`` limits the mode to the
  next N requests, then back to ``ok``.
- ``GET /_mock/stats``: per channel: mode, requests, accepted, delivered, replays, failed,
  rate_limited, unique ids, ids accepted more than once, statuses reported.
- ``GET /_mock/deliveries?channel=whatsapp``: ``{message id: {"accepted": n, "delivered": n,
  "provider_message_id": ...}}``.
- ``POST /_mock/reset``: forget everything, back to ``ok``.

Delivery status: with ``--status-webhook URL`` (or ``"status_webhook"`` in a control request) it
reports each accepted message as delivered by POSTing the channel's webhook payload (WhatsApp's
``statuses``, Instagram's ``delivery.mids``) to ``URL/whatsapp`` or ``URL/instagram``, signed with
``X-Hub-Signature-256`` when given ``--app-secret``, retrying non-2xx answers with backoff, as Meta
does. ``atelier messages webhooks`` receives them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from entrypoints.webhooks import sign

log = logging.getLogger(__name__)

CHANNELS = ("whatsapp", "instagram")
MODES = ("ok", "fail", "slow", "ratelimit")


@dataclass
class ChannelBehaviour:
    mode: str = "ok"
    status: int = 503
    delay_s: float = 1.0
    retry_after: float = 1.0
    count: int | None = None  # requests left in this mode; None = until changed


@dataclass
class Record:
    accepted: int = 0
    delivered: int = 0
    provider_message_id: str | None = None
    recipient: str | None = None


@dataclass
class ChannelState:
    behaviour: ChannelBehaviour = field(default_factory=ChannelBehaviour)
    counters: Counter = field(default_factory=Counter)
    records: dict[str, Record] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # Idempotency-Key -> first answer


class MockChannels:
    """The state behind the server; thread-safe."""

    def __init__(self, *, status_webhook: str | None = None, app_secret: str | None = None) -> None:
        self._lock = threading.Lock()
        self.channels = {name: ChannelState() for name in CHANNELS}
        self.status_webhook = status_webhook.rstrip("/") if status_webhook else None
        self.app_secret = app_secret
        self._reporter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mock-status")

    # Control.

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = body.get("channel", "all")
        names = CHANNELS if channel == "all" else (channel,)
        if any(n not in CHANNELS for n in names):
            raise ValueError(f"channel must be whatsapp, instagram or all, not {channel!r}")
        mode = body.get("mode", "ok")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        status = int(body.get("status", 503))
        if not 400 <= status <= 599:
            raise ValueError("status must be a 4xx or 5xx code")
        count = body.get("count")
        behaviour = dict(mode=mode, status=status, delay_s=float(body.get("delay_s", 1.0)),
                         retry_after=float(body.get("retry_after", 1.0)),
                         count=int(count) if count is not None else None)
        with self._lock:
            for name in names:
                self.channels[name].behaviour = ChannelBehaviour(**behaviour)
            if "status_webhook" in body:
                hook = body["status_webhook"]
                self.status_webhook = hook.rstrip("/") if hook else None
        log.info("mock channels %s now %s", ",".join(names), behaviour)
        return {n: self.channels[n].behaviour.__dict__ for n in names}

    def reset(self) -> None:
        with self._lock:
            self.channels = {name: ChannelState() for name in CHANNELS}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"channels": {
                name: {
                    "mode": state.behaviour.mode,
                    **{k: state.counters[k] for k in ("requests", "accepted", "delivered", "replays", "failed",
                                                      "rate_limited", "rejected", "statuses_reported",
                                                      "status_report_errors")},
                    "unique": len(state.records),
                    "accepted_more_than_once": sorted(i for i, r in state.records.items() if r.accepted > 1),
                } for name, state in self.channels.items()
            }}

    def deliveries(self, channel: str) -> dict[str, Any]:
        with self._lock:
            return {i: r.__dict__.copy() for i, r in self.channels[channel].records.items()}

    # The channel APIs.

    def take(self, channel: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Handle one send request: (status, answer, extra headers). Sleeps outside the lock."""
        state = self.channels[channel]
        if not headers.get("authorization", "").lower().startswith("bearer ") or \
                len(headers["authorization"]) <= len("bearer "):
            return 401, _meta_error("Invalid OAuth access token.", 190, "OAuthException"), {}
        problem = _check_body(channel, body)
        with self._lock:
            state.counters["requests"] += 1
            behaviour = state.behaviour
            mode = behaviour.mode
            if behaviour.count is not None:
                behaviour.count -= 1
                if behaviour.count <= 0:
                    state.behaviour = ChannelBehaviour()
            if mode == "fail":
                state.counters["failed"] += 1
                return behaviour.status, _meta_error(f"mock {channel} failure", behaviour.status), {}
            if mode == "ratelimit":
                state.counters["rate_limited"] += 1
                return 429, _meta_error("(#4) Application request limit reached", 4), {
                    "Retry-After": f"{behaviour.retry_after:g}"}
            if problem:
                state.counters["rejected"] += 1
                return 400, _meta_error(problem, 100), {}
            recipient = body["to"] if channel == "whatsapp" else body["recipient"]["id"]
            key = headers.get("idempotency-key")
            message_id = headers.get("x-atelier-message-id") or key or recipient
            record = state.records.setdefault(message_id, Record(recipient=recipient))
            record.accepted += 1
            state.counters["accepted"] += 1
            if key and key in state.answers:
                state.counters["replays"] += 1
                answer = state.answers[key]
                report = None
            else:
                provider_id = (f"wamid.{uuid.uuid4().hex}" if channel == "whatsapp" else f"mid.{uuid.uuid4().hex}")
                answer = ({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                           "messages": [{"id": provider_id}]} if channel == "whatsapp"
                          else {"recipient_id": recipient, "message_id": provider_id})
                if key:
                    state.answers[key] = answer
                record.delivered += 1
                record.provider_message_id = provider_id
                state.counters["delivered"] += 1
                report = (provider_id, recipient) if self.status_webhook else None
            hook = self.status_webhook
        if report and hook:
            self._reporter.submit(self._report, channel, hook, *report)
        if mode == "slow":
            time.sleep(behaviour.delay_s)
        return 200, answer, {}

    # Delivery status reports.

    def _report(self, channel: str, hook: str, provider_id: str, recipient: str) -> None:
        payload = json.dumps(status_payload(channel, provider_id, recipient)).encode()
        headers = {"Content-Type": "application/json"}
        if self.app_secret:
            headers["X-Hub-Signature-256"] = sign(self.app_secret, payload)
        import httpx

        delay = 0.2
        for _ in range(10):
            try:
                response = httpx.post(f"{hook}/{channel}", content=payload, headers=headers, timeout=10)
                if 200 <= response.status_code < 300:
                    with self._lock:
                        self.channels[channel].counters["statuses_reported"] += 1
                    return
            except httpx.HTTPError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        with self._lock:
            self.channels[channel].counters["status_report_errors"] += 1
        log.warning("mock %s: status of %s could not be reported to %s", channel, provider_id, hook)

    def close(self) -> None:
        self._reporter.shutdown(wait=False, cancel_futures=True)


def status_payload(channel: str, provider_id: str, recipient: str) -> dict[str, Any]:
    """A 'delivered' status webhook in the channel's shape."""
    now = int(time.time())
    if channel == "whatsapp":
        return {"object": "whatsapp_business_account", "entry": [{"id": "mock-waba", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"phone_number_id": "mock"},
                "statuses": [{"id": provider_id, "status": "delivered", "timestamp": str(now),
                              "recipient_id": recipient}]}}]}]}
    return {"object": "instagram", "entry": [{"id": "mock-ig", "time": now * 1000, "messaging": [{
        "sender": {"id": recipient}, "recipient": {"id": "mock-ig"}, "timestamp": now * 1000,
        "delivery": {"mids": [provider_id], "watermark": now * 1000}}]}]}


def _meta_error(message: str, code: int, kind: str = "GraphMethodException") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "fbtrace_id": uuid.uuid4().hex[:12]}}


def _check_body(channel: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if channel == "whatsapp":
        if body.get("messaging_product") != "whatsapp":
            return "(#100) The parameter messaging_product is required."
        if not isinstance(body.get("to"), str) or not body["to"]:
            return "(#100) The parameter to is required."
        kind = body.get("type", "text")
        if kind == "text":
            text = body.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
                return "(#100) The parameter text['body'] is required."
        elif kind == "image":
            if not isinstance(body.get("image"), dict) or not body["image"].get("link"):
                return "(#100) The parameter image['link'] is required."
        else:
            return f"(#100) Unsupported message type {kind!r} in the mock."
        return None
    recipient, message = body.get("recipient"), body.get("message")
    if not isinstance(recipient, dict) or not recipient.get("id"):
        return "(#100) The parameter recipient is required"
    if not isinstance(message, dict) or not (message.get("text") or message.get("attachment")):
        return "(#100) The parameter message must have text or attachment"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("mock request: " + format, *args)

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        mock = self.server.mock
        if url.path == "/healthz":
            return self._reply(200, {"status": "ok"})
        if url.path == "/_mock/stats":
            return self._reply(200, mock.stats())
        if url.path == "/_mock/deliveries":
            channel = parse_qs(url.query).get("channel", ["whatsapp"])[0]
            if channel not in CHANNELS:
                return self._reply(400, {"error": f"unknown channel {channel!r}"})
            return self._reply(200, mock.deliveries(channel))
        self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = urlsplit(self.path).path.rstrip("/")
        mock = self.server.mock
        body = self._body()
        parts = path.strip("/").split("/")
        if path == "/_mock/control":
            try:
                return self._reply(200, mock.control(body or {}))
            except (ValueError, TypeError) as exc:
                return self._reply(400, {"error": str(exc)})
        if path == "/_mock/reset":
            mock.reset()
            return self._reply(200, {"status": "reset"})
        headers = {k.lower(): v for k, v in self.headers.items()}
        # /whatsapp/[version/]{phone_number_id}/messages and /instagram/[version/]me/messages
        if len(parts) >= 3 and parts[0] == "whatsapp" and parts[-1] == "messages":
            return self._reply(*mock.take("whatsapp", body, headers))
        if len(parts) >= 3 and parts[0] == "instagram" and parts[-2:] == ["me", "messages"]:
            return self._reply(*mock.take("instagram", body, headers))
        self._reply(404, _meta_error(f"Unknown path {path}", 803))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], mock: MockChannels) -> None:
        super().__init__(address, _Handler)
        self.mock = mock


def make_server(host: str, port: int, mock: MockChannels | None = None) -> _Server:
    """A mock-channels server bound to (host, port); port 0 picks a free one (server.server_address)."""
    return _Server((host, port), mock or MockChannels())
