"""Mock chat channels for development and tests: `atelier mock-channels --host --port`.

One HTTP server (the standard library's ThreadingHTTPServer) speaks both APIs the gateways use,
answering the way Meta does, error envelope and codes included:

- WhatsApp Cloud API: ``POST /whatsapp/{phone_number_id}/messages`` (WHATSAPP_BASE_URL=http://host:port/whatsapp)
- Instagram Messaging API: ``POST /instagram/me/messages`` (INSTAGRAM_BASE_URL=http://host:port/instagram)

What it checks, in order, and answers (``{"error": {"message": "(#code) title", "type", "code",
"error_data": {"details"} | "error_subcode", "fbtrace_id"}}``, HTTP 400 unless said):

1. a bearer token (401, code 190);
2. the injected behaviour (below), if any applies to this request;
3. the body's shape (code 100), a replayed Idempotency-Key (the first answer again, delivered once);
4. the 24-hour customer-service window, when enforced: a free-form message (text, image) to a
   recipient who has not written within 24 h is refused (WhatsApp 131047, Instagram 10/2018278);
   a template always goes;
5. templates (WhatsApp): the name and language must be registered (132001, HTTP 404), not paused
   (132015) or disabled (132016), with as many parameters per component as the template has
   (132000), text parameters with text (132012), the body at most 1,024 characters (132005);
6. rate limits, as Meta counts them: the number's throughput (``throughput`` sends in any second;
   WhatsApp 130429, Instagram 613) and the pair rate (one message per ``pair_interval_s`` to one
   recipient; WhatsApp 131056). Defaults: Meta's, 80/s and 6 s for WhatsApp, 300/s and none for
   Instagram.

Accepted, it answers like the real API (a ``wamid.…`` / ``mid.…`` id) and records the message by
its id (the ``X-Atelier-Message-Id`` header, else the Idempotency-Key, else the recipient):
``accepted`` counts the requests it took, ``delivered`` the distinct deliveries a user would see.
Every request is on the timeline with its time, number, recipient and outcome.

Control API (JSON):

- ``POST /_mock/control`` ``{"channel": "whatsapp"|"instagram"|"all", ...}`` with any of:
  ``mode`` ``ok``|``fail``|``slow``|``ratelimit``|``drop`` and its ``status``, ``code``, ``subcode``,
  ``delay_s``, ``retry_after`` (a Retry-After header), ``count`` (the next N requests it applies
  to, then ``ok``), ``probability`` (the share of requests it applies to): ``fail`` answers an
  error without taking the message (by default 131016/503 for a 5xx, 100 for a 4xx; Instagram 2),
  ``ratelimit`` a rate limit (by default 130429 on WhatsApp, 613 on Instagram, HTTP 400),
  ``slow`` takes the message and answers after ``delay_s`` (a client that times out has been
  delivered to all the same), ``drop`` takes the message and closes the connection without an
  answer (the answer lost on the way back: the client cannot know it was delivered). Also
  ``limits`` ``{"throughput": n|null, "pair_interval_s": s|null}``,
  ``window`` ``open`` (every recipient wrote recently, the default) | ``enforce``, ``statuses``
  (what is reported per accepted message, in order: ``sent``, ``delivered``, ``read``, ``failed``;
  default ``["delivered"]``) with ``failed_code`` (131026), ``templates`` (see below),
  ``status_webhook``.
- ``POST /_mock/inbound`` ``{"channel": ..., "from": recipient}``: the recipient writes, opening
  their 24-hour window.
- ``POST /_mock/templates`` ``{"name": {"en_US": {"body": 2, "header": 0, "status": "APPROVED"}}}``:
  registers templates (``hello_world`` with no parameters and ``order_update`` with two body
  parameters, en_US and es, and the paused ``seasonal_promo`` are there from the start).
- ``GET /_mock/stats``: per channel: mode, counters (requests, accepted, delivered, replays, failed,
  rate_limited, throughput_limited, pair_limited, window_refused, template_refused, rejected,
  statuses_reported...), unique ids, ids accepted more than once.
- ``GET /_mock/deliveries?channel=whatsapp``: ``{message id: {"accepted", "delivered", "recipient",
  "provider_message_id", "traceparent"}}`` (the last request's W3C trace context, when it had
  one). ``GET /_mock/timeline?channel=whatsapp``: ``[{"t", "sender",
  "recipient", "outcome"}]`` (``accepted``, ``replay`` or the error code).
- ``POST /_mock/reset``: forget everything, back to the defaults.

Delivery status: with ``--status-webhook URL`` (or ``"status_webhook"`` in a control request) it
reports each accepted message by POSTing the channel's webhook payload (WhatsApp's ``statuses``,
with ``errors`` for ``failed``; Instagram's ``delivery.mids`` and ``read.mid``) to ``URL/whatsapp``
or ``URL/instagram``, signed with ``X-Hub-Signature-256`` when given ``--app-secret``, retrying
non-2xx answers with backoff, as Meta does. ``atelier messages webhooks`` receives them.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapters.channels.meta_errors import lookup
from entrypoints.webhooks import sign

log = logging.getLogger(__name__)

CHANNELS = ("whatsapp", "instagram")
MODES = ("ok", "fail", "slow", "ratelimit", "drop")
DROP = 0  # take()'s status for "close the connection, answer nothing"
REPORTABLE = ("sent", "delivered", "read", "failed")
#: Meta's published limits (docs/messaging.md): throughput per number, pair interval.
DEFAULT_LIMITS = {"whatsapp": {"throughput": 80, "pair_interval_s": 6.0},
                  "instagram": {"throughput": 300, "pair_interval_s": None}}
WINDOW_S = 24 * 3600
MAX_TEMPLATE_BODY = 1024

#: The HTTP status Meta answers with for a code (400 for any other).
HTTP_STATUS = {190: 401, 0: 401, 10: 403, 200: 403, 368: 403, 3: 500, 2: 503, 131000: 500, 131016: 503,
               1200: 500, 132001: 404, 133004: 503}


def default_templates() -> dict[str, dict[str, dict[str, Any]]]:
    """name -> language -> {"body": parameters, "header": parameters, "status"}."""
    return {
        "hello_world": {"en_US": {"body": 0}},
        "order_update": {"en_US": {"body": 2}, "es": {"body": 2}},
        "seasonal_promo": {"en_US": {"body": 1, "status": "PAUSED"}},
    }


@dataclass
class ChannelBehaviour:
    mode: str = "ok"
    status: int | None = None
    code: int | None = None
    subcode: int | None = None
    delay_s: float = 1.0
    retry_after: float | None = None
    count: int | None = None  # requests left in this mode; None = until changed
    probability: float = 1.0


@dataclass
class Record:
    accepted: int = 0
    delivered: int = 0
    provider_message_id: str | None = None
    recipient: str | None = None
    traceparent: str | None = None  # the W3C trace context of the last request taken (docs/tracing.md)


@dataclass
class ChannelState:
    name: str
    behaviour: ChannelBehaviour = field(default_factory=ChannelBehaviour)
    counters: Counter = field(default_factory=Counter)
    records: dict[str, Record] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # Idempotency-Key -> first answer
    limits: dict[str, Any] = field(default_factory=dict)
    window: str = "open"
    inbound: dict[str, float] = field(default_factory=dict)  # recipient -> when they last wrote
    statuses: list[str] = field(default_factory=lambda: ["delivered"])
    failed_code: int = 131026
    sends: dict[str, deque] = field(default_factory=dict)  # sender -> accepted send times (last second)
    last_to: dict[tuple[str, str], float] = field(default_factory=dict)  # (sender, recipient) -> last send
    timeline: deque = field(default_factory=lambda: deque(maxlen=200_000))

    def __post_init__(self) -> None:
        self.limits = dict(DEFAULT_LIMITS[self.name])


class MockError(Exception):
    """A Meta error answer: code (and subcode), details, HTTP status, extra headers."""

    def __init__(self, channel: str, code: int, details: str, *, status: int | None = None,
                 subcode: int | None = None, headers: dict[str, str] | None = None, counter: str = "rejected"):
        super().__init__(details)
        self.channel, self.code, self.details, self.subcode = channel, code, details, subcode
        self.status = status or HTTP_STATUS.get(code, 400)
        self.headers = headers or {}
        self.counter = counter

    def body(self) -> dict[str, Any]:
        row = lookup(self.channel, self.code, self.subcode)
        title = row.title if row else self.details
        error: dict[str, Any] = {"message": f"(#{self.code}) {title}", "type": "OAuthException", "code": self.code,
                                 "fbtrace_id": uuid.uuid4().hex[:23]}
        if self.channel == "whatsapp":
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        else:
            error["message"] = f"(#{self.code}) {self.details}"
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        return {"error": error}


class MockChannels:
    """The state behind the server; thread-safe."""

    def __init__(self, *, status_webhook: str | None = None, app_secret: str | None = None) -> None:
        self._lock = threading.Lock()
        self.channels = {name: ChannelState(name) for name in CHANNELS}
        self.templates = default_templates()
        self.status_webhook = status_webhook.rstrip("/") if status_webhook else None
        self.app_secret = app_secret
        self._reporter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mock-status")

    # Control.

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError("the control body must be a JSON object")
        channel = body.get("channel", "all")
        names = CHANNELS if channel == "all" else (channel,)
        if any(n not in CHANNELS for n in names):
            raise ValueError(f"channel must be whatsapp, instagram or all, not {channel!r}")
        changes: dict[str, Any] = {}
        if "mode" in body:
            mode = body["mode"]
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
            status = body.get("status")
            if status is not None and not 400 <= int(status) <= 599:
                raise ValueError("status must be a 4xx or 5xx code")
            probability = float(body.get("probability", 1.0))
            if not 0 <= probability <= 1:
                raise ValueError("probability must be within [0, 1]")
            count = body.get("count")
            changes["behaviour"] = dict(
                mode=mode, status=int(status) if status is not None else None,
                code=int(body["code"]) if body.get("code") is not None else None,
                subcode=int(body["subcode"]) if body.get("subcode") is not None else None,
                delay_s=float(body.get("delay_s", 1.0)),
                retry_after=float(body["retry_after"]) if body.get("retry_after") is not None else None,
                count=int(count) if count is not None else None, probability=probability)
        if "limits" in body:
            limits = body["limits"]
            if not isinstance(limits, dict) or set(limits) - {"throughput", "pair_interval_s"}:
                raise ValueError("limits takes throughput and pair_interval_s")
            changes["limits"] = {k: (float(v) if k == "pair_interval_s" else int(v)) if v is not None else None
                                 for k, v in limits.items()}
        if "window" in body:
            if body["window"] not in ("open", "enforce"):
                raise ValueError("window must be open or enforce")
            changes["window"] = body["window"]
        if "statuses" in body:
            statuses = body["statuses"]
            if not isinstance(statuses, list) or any(s not in REPORTABLE for s in statuses):
                raise ValueError(f"statuses must be a list of {', '.join(REPORTABLE)}")
            changes["statuses"] = list(statuses)
        if "failed_code" in body:
            changes["failed_code"] = int(body["failed_code"])
        if "templates" in body:
            self.add_templates(body["templates"])
        with self._lock:
            for name in names:
                state = self.channels[name]
                if "behaviour" in changes:
                    state.behaviour = ChannelBehaviour(**changes["behaviour"])
                if "limits" in changes:
                    state.limits.update(changes["limits"])
                for key in ("window", "statuses", "failed_code"):
                    if key in changes:
                        setattr(state, key, changes[key])
            if "status_webhook" in body:
                hook = body["status_webhook"]
                self.status_webhook = hook.rstrip("/") if hook else None
        log.info("mock channels %s now %s", ",".join(names), changes)
        return {n: {"behaviour": self.channels[n].behaviour.__dict__, "limits": self.channels[n].limits,
                    "window": self.channels[n].window, "statuses": self.channels[n].statuses} for n in names}

    def add_templates(self, templates: Any) -> None:
        if not isinstance(templates, dict) or not all(
                isinstance(langs, dict) and all(isinstance(spec, dict) for spec in langs.values())
                for langs in templates.values()):
            raise ValueError('templates: {"name": {"en_US": {"body": 2, "status": "APPROVED"}}}')
        with self._lock:
            for name, languages in templates.items():
                self.templates.setdefault(name, {}).update(languages)

    def inbound(self, body: Any) -> dict[str, Any]:
        """A customer writes: their 24-hour window opens."""
        if not isinstance(body, dict) or body.get("channel") not in CHANNELS or not isinstance(body.get("from"), str):
            raise ValueError('inbound takes {"channel": "whatsapp"|"instagram", "from": recipient}')
        with self._lock:
            self.channels[body["channel"]].inbound[body["from"]] = time.time()
        return {"window_open": body["from"]}

    def reset(self) -> None:
        with self._lock:
            self.channels = {name: ChannelState(name) for name in CHANNELS}
            self.templates = default_templates()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"channels": {
                name: {
                    "mode": state.behaviour.mode,
                    **{k: state.counters[k] for k in (
                        "requests", "accepted", "delivered", "replays", "failed", "rate_limited", "dropped",
                        "throughput_limited", "pair_limited", "window_refused", "template_refused", "rejected",
                        "statuses_reported", "status_report_errors")},
                    "unique": len(state.records),
                    "accepted_more_than_once": sorted(i for i, r in state.records.items() if r.accepted > 1),
                } for name, state in self.channels.items()
            }}

    def deliveries(self, channel: str) -> dict[str, Any]:
        with self._lock:
            # traceparent only when a request carried one: untraced callers see the records as before.
            return {i: {k: v for k, v in r.__dict__.items() if k != "traceparent" or v is not None}
                    for i, r in self.channels[channel].records.items()}

    def timeline(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.channels[channel].timeline)

    # The channel APIs.

    def take(self, channel: str, sender: str, body: Any,
             headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Handle one send request: (status, answer, extra headers); status DROP: close the
        connection without answering. Sleeps outside the lock."""
        now = time.time()
        state = self.channels[channel]
        recipient = _recipient(channel, body)
        try:
            auth = headers.get("authorization", "")
            if not auth.lower().startswith("bearer ") or len(auth) <= len("bearer "):
                raise MockError(channel, 190, "Invalid OAuth access token.")
            with self._lock:
                state.counters["requests"] += 1
                behaviour = self._injected(state)
                if behaviour is not None and behaviour.mode in ("fail", "ratelimit"):
                    raise self._injected_error(channel, behaviour)
                problem = _check_body(channel, body)
                if problem:
                    raise MockError(channel, 100, problem)
                key = headers.get("idempotency-key")
                if key and key in state.answers:
                    state.counters["replays"] += 1
                    record = state.records.setdefault(headers.get("x-atelier-message-id") or key,
                                                      Record(recipient=recipient))
                    record.accepted += 1
                    record.traceparent = headers.get("traceparent")
                    state.counters["accepted"] += 1
                    state.timeline.append({"t": now, "sender": sender, "recipient": recipient, "outcome": "replay"})
                    answer, report = state.answers[key], None
                else:
                    self._check_window(state, body, recipient, now)
                    if channel == "whatsapp" and body.get("type") == "template":
                        self._check_template(body["template"])
                    self._check_rates(state, sender, recipient, now)
                    answer, report = self._accept(state, sender, recipient, body, headers, now)
                hook, statuses, failed_code = self.status_webhook, list(state.statuses), state.failed_code
                if behaviour is not None and behaviour.mode == "drop":
                    state.counters["dropped"] += 1
        except MockError as exc:
            with self._lock:
                state.counters[exc.counter] += 1
                if exc.counter in ("throughput_limited", "pair_limited"):
                    state.counters["rate_limited"] += 1
                state.timeline.append({"t": now, "sender": sender, "recipient": recipient, "outcome": exc.code})
            return exc.status, exc.body(), exc.headers
        if report and hook:
            self._reporter.submit(self._report, channel, hook, *report, statuses, failed_code)
        if behaviour is not None and behaviour.mode == "slow":
            time.sleep(behaviour.delay_s)
        if behaviour is not None and behaviour.mode == "drop":
            return DROP, answer, {}
        return 200, answer, {}

    def _injected(self, state: ChannelState) -> ChannelBehaviour | None:
        """The behaviour that applies to this request (None: behave normally)."""
        behaviour = state.behaviour
        if behaviour.mode == "ok" or (behaviour.probability < 1 and random.random() >= behaviour.probability):
            return None
        if behaviour.count is not None:
            behaviour.count -= 1
            if behaviour.count <= 0:
                state.behaviour = ChannelBehaviour()
        return behaviour

    @staticmethod
    def _injected_error(channel: str, behaviour: ChannelBehaviour) -> MockError:
        headers = {"Retry-After": f"{behaviour.retry_after:g}"} if behaviour.retry_after is not None else {}
        if behaviour.mode == "ratelimit":
            code = behaviour.code if behaviour.code is not None else 130429 if channel == "whatsapp" else 613
            return MockError(channel, code, f"mock {channel} rate limit", status=behaviour.status or 400,
                             subcode=behaviour.subcode, headers=headers, counter="rate_limited")
        status = behaviour.status or 503
        default = (131016 if status == 503 else 131000 if status >= 500 else 100) if channel == "whatsapp" \
            else (2 if status >= 500 else 100)
        return MockError(channel, behaviour.code if behaviour.code is not None else default, f"mock {channel} failure",
                         status=status,
                         subcode=behaviour.subcode, headers=headers, counter="failed")

    def _check_window(self, state: ChannelState, body: dict[str, Any], recipient: str, now: float) -> None:
        if state.window != "enforce" or (state.name == "whatsapp" and body.get("type") == "template"):
            return
        if now - state.inbound.get(recipient, float("-inf")) <= WINDOW_S:
            return
        if state.name == "whatsapp":
            raise MockError("whatsapp", 131047, "Message failed to send because more than 24 hours have passed "
                            "since the customer last replied to this number.", counter="window_refused")
        raise MockError("instagram", 10, "This message is sent outside of allowed window.", subcode=2018278,
                        counter="window_refused")

    def _check_template(self, template: dict[str, Any]) -> None:
        def refuse(code: int, details: str) -> MockError:
            return MockError("whatsapp", code, details, counter="template_refused")

        name = template.get("name")
        language = (template.get("language") or {}).get("code") if isinstance(template.get("language"), dict) \
            else None
        spec = self.templates.get(name, {}).get(language) if isinstance(name, str) else None
        if spec is None:
            raise refuse(132001, f"template name ({name}) does not exist in {language}")
        if spec.get("status") == "PAUSED":
            raise refuse(132015, f"template {name} is paused for low quality")
        if spec.get("status") == "DISABLED":
            raise refuse(132016, f"template {name} is disabled")
        components = template.get("components") or []
        if not isinstance(components, list):
            raise refuse(132000, "components must be a list")
        given: Counter = Counter()
        body_chars = 0
        for component in components:
            if not isinstance(component, dict):
                raise refuse(132000, "each component must be an object")
            kind = component.get("type")
            parameters = component.get("parameters") or []
            if not isinstance(parameters, list):
                raise refuse(132012, f"{kind} parameters must be a list")
            for parameter in parameters:
                given[kind] += 1
                if not isinstance(parameter, dict) or parameter.get("type") not in (
                        "text", "currency", "date_time", "image", "document", "video", "payload"):
                    raise refuse(132012, f"a {kind} parameter has no known type")
                if parameter["type"] == "text":
                    if not isinstance(parameter.get("text"), str) or not parameter["text"].strip():
                        raise refuse(132012, f"a {kind} text parameter has no text")
                    if kind == "body":
                        body_chars += len(parameter["text"])
                elif parameter["type"] not in parameter:
                    raise refuse(132012, f"a {kind} {parameter['type']} parameter has no {parameter['type']}")
        for kind in ("header", "body"):
            expected = int(spec.get(kind, 0))
            if given[kind] != expected:
                raise refuse(132000, f"number of {kind} parameters ({given[kind]}) does not match the expected "
                                     f"number of params ({expected})")
        if body_chars > MAX_TEMPLATE_BODY:
            raise refuse(132005, "translated text too long")

    def _check_rates(self, state: ChannelState, sender: str, recipient: str, now: float) -> None:
        throughput, pair = state.limits.get("throughput"), state.limits.get("pair_interval_s")
        sends = state.sends.setdefault(sender, deque())
        while sends and sends[0] <= now - 1.0:
            sends.popleft()
        if throughput is not None and len(sends) >= throughput:
            code = 130429 if state.name == "whatsapp" else 613
            raise MockError(state.name, code, "Message failed to send because there were too many messages "
                            "sent from this phone number in a short period of time", counter="throughput_limited")
        if pair and now - state.last_to.get((sender, recipient), float("-inf")) < pair:
            code = 131056 if state.name == "whatsapp" else 613
            raise MockError(state.name, code, "Message failed to send because there were too many messages "
                            "sent from this phone number to the same phone number in a short period of time",
                            counter="pair_limited")

    def _accept(self, state: ChannelState, sender: str, recipient: str, body: dict[str, Any],
                headers: dict[str, str], now: float) -> tuple[dict[str, Any], tuple[str, str] | None]:
        state.sends.setdefault(sender, deque()).append(now)
        state.last_to[(sender, recipient)] = now
        if len(state.last_to) > 100_000:  # forget pairs older than any interval
            state.last_to = {k: t for k, t in state.last_to.items() if now - t < 3600}
        key = headers.get("idempotency-key")
        message_id = headers.get("x-atelier-message-id") or key or recipient
        record = state.records.setdefault(message_id, Record(recipient=recipient))
        record.accepted += 1
        record.traceparent = headers.get("traceparent")
        state.counters["accepted"] += 1
        provider_id = f"wamid.{uuid.uuid4().hex}" if state.name == "whatsapp" else f"mid.{uuid.uuid4().hex}"
        answer = ({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                   "messages": [{"id": provider_id}]} if state.name == "whatsapp"
                  else {"recipient_id": recipient, "message_id": provider_id})
        if key:
            state.answers[key] = answer
        record.delivered += 1
        record.provider_message_id = provider_id
        state.counters["delivered"] += 1
        state.timeline.append({"t": now, "sender": sender, "recipient": recipient, "outcome": "accepted"})
        return answer, (provider_id, recipient)

    # Delivery status reports.

    def _report(self, channel: str, hook: str, provider_id: str, recipient: str, statuses: list[str],
                failed_code: int) -> None:
        import httpx

        for status in statuses:
            payload = status_payload(channel, provider_id, recipient, status, failed_code=failed_code)
            if payload is None:
                continue
            data = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"}
            if self.app_secret:
                headers["X-Hub-Signature-256"] = sign(self.app_secret, data)
            delay = 0.2
            for _ in range(10):
                try:
                    response = httpx.post(f"{hook}/{channel}", content=data, headers=headers, timeout=10)
                    if 200 <= response.status_code < 300:
                        with self._lock:
                            self.channels[channel].counters["statuses_reported"] += 1
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                with self._lock:
                    self.channels[channel].counters["status_report_errors"] += 1
                log.warning("mock %s: status %s of %s could not be reported to %s", channel, status, provider_id,
                            hook)

    def close(self) -> None:
        self._reporter.shutdown(wait=False, cancel_futures=True)


def status_payload(channel: str, provider_id: str, recipient: str, status: str = "delivered", *,
                   failed_code: int = 131026) -> dict[str, Any] | None:
    """A status webhook in the channel's shape (None: the channel reports no such status)."""
    now = int(time.time())
    if channel == "whatsapp":
        entry: dict[str, Any] = {"id": provider_id, "status": status, "timestamp": str(now),
                                 "recipient_id": recipient}
        if status == "failed":
            row = lookup("whatsapp", failed_code)
            title = row.title if row else "Failed"
            entry["errors"] = [{"code": failed_code, "title": title, "message": title,
                                "error_data": {"details": f"mock: {title}"},
                                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]
        return {"object": "whatsapp_business_account", "entry": [{"id": "mock-waba", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"phone_number_id": "mock"},
                "statuses": [entry]}}]}]}
    if status == "delivered":
        event: dict[str, Any] = {"delivery": {"mids": [provider_id], "watermark": now * 1000}}
    elif status == "read":
        event = {"read": {"mid": provider_id}}
    else:
        return None  # Instagram reports deliveries and reads only
    return {"object": "instagram", "entry": [{"id": "mock-ig", "time": now * 1000, "messaging": [{
        "sender": {"id": recipient}, "recipient": {"id": "mock-ig"}, "timestamp": now * 1000, **event}]}]}


def _recipient(channel: str, body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if channel == "whatsapp":
        return str(body.get("to") or "")
    recipient = body.get("recipient")
    return str(recipient.get("id") or "") if isinstance(recipient, dict) else ""


def _check_body(channel: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if channel == "whatsapp":
        if body.get("messaging_product") != "whatsapp":
            return "The parameter messaging_product is required."
        if not isinstance(body.get("to"), str) or not body["to"]:
            return "The parameter to is required."
        kind = body.get("type", "text")
        if kind == "text":
            text = body.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
                return "The parameter text['body'] is required."
        elif kind == "image":
            if not isinstance(body.get("image"), dict) or not body["image"].get("link"):
                return "The parameter image['link'] is required."
        elif kind == "template":
            template = body.get("template")
            if not isinstance(template, dict) or not isinstance(template.get("name"), str) \
                    or not isinstance(template.get("language"), dict):
                return "The parameter template['name'] and template['language'] are required."
        else:
            return f"Unsupported message type {kind!r} in the mock."
        return None
    recipient, message = body.get("recipient"), body.get("message")
    if not isinstance(recipient, dict) or not recipient.get("id"):
        return "The parameter recipient is required"
    if not isinstance(message, dict) or not (message.get("text") or message.get("attachment")):
        return "The parameter message must have text or attachment"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("mock request: " + format, *args)

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if status == DROP:
            self.close_connection = True  # the server closes the socket; the client gets no answer
            return
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
        if url.path in ("/_mock/deliveries", "/_mock/timeline"):
            channel = parse_qs(url.query).get("channel", ["whatsapp"])[0]
            if channel not in CHANNELS:
                return self._reply(400, {"error": f"unknown channel {channel!r}"})
            return self._reply(200, mock.deliveries(channel) if url.path == "/_mock/deliveries"
                               else mock.timeline(channel))
        self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = urlsplit(self.path).path.rstrip("/")
        mock = self.server.mock
        body = self._body()
        parts = path.strip("/").split("/")
        controls = {"/_mock/control": lambda: mock.control(body or {}),
                    "/_mock/inbound": lambda: mock.inbound(body),
                    "/_mock/templates": lambda: mock.add_templates(body) or {"templates": sorted(mock.templates)}}
        if path in controls:
            try:
                return self._reply(200, controls[path]())
            except (ValueError, TypeError) as exc:
                return self._reply(400, {"error": str(exc)})
        if path == "/_mock/reset":
            mock.reset()
            return self._reply(200, {"status": "reset"})
        headers = {k.lower(): v for k, v in self.headers.items()}
        # /whatsapp/[version/]{phone_number_id}/messages and /instagram/[version/]me/messages
        if len(parts) >= 3 and parts[0] == "whatsapp" and parts[-1] == "messages":
            return self._reply(*mock.take("whatsapp", parts[-2], body, headers))
        if len(parts) >= 3 and parts[0] == "instagram" and parts[-2:] == ["me", "messages"]:
            return self._reply(*mock.take("instagram", "me", body, headers))
        error = MockError("whatsapp" if parts[0] == "whatsapp" else "instagram", 100, f"Unknown path {path}",
                          status=404)
        self._reply(404, error.body())


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
