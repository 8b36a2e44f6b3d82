"""The HTTP channel gateways against the real mock-channels server on 127.0.0.1 (which answers as
Meta does: error envelope and codes, rate limits, templates, the 24-hour window), the status
webhooks, and MessagingService on real SQL with both. Meta's codes row by row:
tests/integration/test_meta_errors.py."""

from __future__ import annotations

import threading
import uuid
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

from adapters.channels.http import InstagramGateway, WhatsAppGateway, parse_retry_after
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.errors import NotFound, PermanentError, RateLimited, TransientError
from domain.models import MessageChannel, MessageStatus, MessageTemplate, OutboundMessage, ReportedStatus, new_id
from domain.services.messaging import MessagingService
from entrypoints.devtools.mock_channels import MockChannels
from entrypoints.devtools.mock_channels import make_server as make_mock_server
from entrypoints.webhooks import WebhookApp, sign
from tests import services

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


class Mock:
    """A mock-channels server in a thread, with helpers for its control API."""

    def __init__(self, **kw) -> None:
        self.state = MockChannels(**kw)
        self.server = make_mock_server("127.0.0.1", 0, self.state)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def control(self, **body) -> httpx.Response:
        return httpx.post(f"{self.url}/_mock/control", json=body)

    def stats(self, channel: str) -> dict:
        return httpx.get(f"{self.url}/_mock/stats").json()["channels"][channel]

    def deliveries(self, channel: str) -> dict:
        return httpx.get(f"{self.url}/_mock/deliveries", params={"channel": channel}).json()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.state.close()


@pytest.fixture
def mock():
    m = Mock()
    yield m
    m.close()


def _gateways(url: str, timeout: float = 5.0):
    return {WA: WhatsAppGateway(f"{url}/whatsapp", "tok", "12345", timeout=timeout),
            IG: InstagramGateway(f"{url}/instagram", "tok", timeout=timeout)}


def _message(channel=MessageChannel.ALL, **kw) -> OutboundMessage:
    """A message to a recipient of its own (the mock's pair rate applies per recipient)."""
    recipient = kw.pop("recipient", None) or f"+1555{uuid.uuid4().int % 10**7:07d}"
    return OutboundMessage(id=new_id(), channel=channel, recipient=recipient, **kw)


def test_whatsapp_text_in_the_cloud_api_shape(mock):
    gateway = _gateways(mock.url)[WA]
    message = _message(text="hello", recipient="+15550001")
    receipt = gateway.send(message, f"{message.id}:whatsapp")
    assert receipt.provider_message_id.startswith("wamid.")
    assert mock.deliveries("whatsapp") == {message.id: {"accepted": 1, "delivered": 1, "recipient": "+15550001",
                                                         "provider_message_id": receipt.provider_message_id}}
    assert gateway.body(message) == {"messaging_product": "whatsapp", "recipient_type": "individual",
                                     "to": "+15550001", "type": "text", "text": {"body": "hello"}}
    assert gateway.url().endswith("/whatsapp/12345/messages")
    image = _message(media_url="https://example.com/a.png")
    assert gateway.send(image, "k2").provider_message_id.startswith("wamid.")
    assert gateway.body(image)["image"] == {"link": "https://example.com/a.png"}


def test_instagram_text_and_image_in_the_messaging_api_shape(mock):
    gateway = _gateways(mock.url)[IG]
    text, image = _message(text="hi", recipient="1789"), _message(media_url="https://example.com/b.jpg",
                                                                   recipient="1790")
    assert gateway.send(text, "a").provider_message_id.startswith("mid.")
    assert gateway.send(image, "b").provider_message_id.startswith("mid.")
    assert gateway.body(text) == {"recipient": {"id": "1789"}, "message": {"text": "hi"}}
    assert gateway.url().endswith("/instagram/me/messages")
    assert set(mock.deliveries("instagram")) == {text.id, image.id}
    assert mock.stats("whatsapp")["requests"] == 0


def test_the_mock_refuses_what_the_api_would_in_metas_envelope(mock):
    no_token = httpx.post(f"{mock.url}/whatsapp/1/messages", json={"messaging_product": "whatsapp", "to": "1",
                                                                     "type": "text", "text": {"body": "x"}})
    assert no_token.status_code == 401 and no_token.json()["error"]["code"] == 190
    bad = httpx.post(f"{mock.url}/instagram/me/messages", json={"recipient": {"id": "1"}},
                     headers={"Authorization": "Bearer t"})
    assert bad.status_code == 400 and "message" in bad.json()["error"]["message"]
    wa_bad = httpx.post(f"{mock.url}/whatsapp/1/messages", headers={"Authorization": "Bearer t"},
                        json={"messaging_product": "whatsapp", "to": "1", "type": "text"})
    error = wa_bad.json()["error"]
    assert wa_bad.status_code == 400 and error["code"] == 100 and error["message"] == "(#100) Invalid parameter"
    assert error["error_data"]["messaging_product"] == "whatsapp" and "text['body']" in error["error_data"]["details"]
    assert error["type"] == "OAuthException" and error["fbtrace_id"]
    assert mock.control(mode="explode").status_code == 400
    assert mock.control(channel="sms").status_code == 400
    assert mock.control(statuses=["lost"]).status_code == 400


def test_classified_by_metas_code_not_the_http_status(mock):
    """Meta answers rate limits with 400: a 130429 is a RateLimited (retried), not a permanent 4xx;
    the same code under 429 is the same; a 5xx's code decides too."""
    gateway = _gateways(mock.url)[WA]
    message = _message(text="x")
    mock.control(channel="whatsapp", mode="fail", status=503)
    with pytest.raises(TransientError, match=r"131016 Service unavailable: mock whatsapp failure") as down:
        gateway.send(message, "k")
    assert not isinstance(down.value, RateLimited) and "HTTP 503, fbtrace_id " in str(down.value)
    mock.control(channel="whatsapp", mode="fail", status=400)
    with pytest.raises(PermanentError, match=r"whatsapp: 100 Invalid parameter: mock whatsapp failure"):
        gateway.send(message, "k")
    for status in (400, 429):
        mock.control(channel="whatsapp", mode="ratelimit", status=status)
        with pytest.raises(RateLimited, match=f"130429 Rate limit hit: .*HTTP {status}") as limited:
            gateway.send(message, "k")
        assert (limited.value.scope, limited.value.retry_after) == ("sender", 1.0)
    mock.control(channel="whatsapp", mode="ratelimit", code=80007, retry_after=90)
    with pytest.raises(RateLimited, match="80007 Rate limit issues") as account:
        gateway.send(message, "k")
    assert (account.value.scope, account.value.retry_after) == ("account", 90)  # Retry-After above the table's 60
    assert mock.deliveries("whatsapp") == {}  # none of those reached the user
    mock.control(channel="whatsapp", mode="ok")
    assert gateway.send(message, "k").provider_message_id
    stats = mock.stats("whatsapp")
    assert (stats["failed"], stats["rate_limited"], stats["delivered"]) == (2, 3, 1)


def test_the_mock_limits_throughput_per_number_and_the_pair_rate_per_recipient(mock):
    gateway = _gateways(mock.url)[WA]
    mock.control(channel="whatsapp", limits={"throughput": 3, "pair_interval_s": 30})
    gateway.pair_interval_s = 30
    first = _message(text="1", recipient="+100")
    gateway.send(first, "a")
    with pytest.raises(RateLimited, match="131056") as pair:
        gateway.send(_message(text="2", recipient="+100"), "b")
    assert (pair.value.scope, pair.value.retry_after) == ("recipient", 30)  # the pair interval, at least
    gateway.send(_message(text="3", recipient="+101"), "c")  # another recipient goes
    gateway.send(_message(text="4", recipient="+102"), "d")
    with pytest.raises(RateLimited, match="130429") as throughput:  # the 4th send within a second
        gateway.send(_message(text="5", recipient="+103"), "e")
    assert throughput.value.scope == "sender"
    # Another number has its own throughput.
    other = WhatsAppGateway(f"{mock.url}/whatsapp", "tok", "999", timeout=5)
    other.send(_message(text="6", recipient="+104"), "f")
    stats = mock.stats("whatsapp")
    assert (stats["accepted"], stats["pair_limited"], stats["throughput_limited"]) == (4, 1, 1)
    outcomes = [(e["sender"], e["recipient"], e["outcome"]) for e in httpx.get(
        f"{mock.url}/_mock/timeline", params={"channel": "whatsapp"}).json()]
    assert outcomes == [("12345", "+100", "accepted"), ("12345", "+100", 131056), ("12345", "+101", "accepted"),
                        ("12345", "+102", "accepted"), ("12345", "+103", 130429), ("999", "+104", "accepted")]


def test_outside_the_24_hour_window_only_a_template_goes(mock):
    wa, ig = _gateways(mock.url)[WA], _gateways(mock.url)[IG]
    mock.control(window="enforce")
    with pytest.raises(PermanentError, match=r"131047 Re-engagement message: .*send a template"):
        wa.send(_message(text="hello again", recipient="+200"), "a")
    template = MessageTemplate("order_update", "en_US", [
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#42"}]}])
    assert wa.send(_message(template=template, recipient="+200"), "b").provider_message_id
    with pytest.raises(PermanentError, match=r"10/2018278 Message sent outside of allowed window"):
        ig.send(_message(text="hi", recipient="1789"), "c")
    assert httpx.post(f"{mock.url}/_mock/inbound", json={"channel": "instagram", "from": "1789"}).status_code == 200
    assert ig.send(_message(text="hi", recipient="1789"), "d").provider_message_id
    assert mock.stats("whatsapp")["window_refused"] == mock.stats("instagram")["window_refused"] == 1


@pytest.mark.parametrize("template, code", [
    (MessageTemplate("no_such_template", "en_US"), "132001 Template does not exist"),
    (MessageTemplate("order_update", "fr"), "132001 Template does not exist"),
    (MessageTemplate("order_update", "en_US", [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]),
     "132000 Template Param Count Mismatch"),
    (MessageTemplate("order_update", "en_US", [{"type": "body", "parameters": [
        {"type": "text", "text": "x"}, {"type": "text"}]}]), "132012 Template Parameter Format Mismatch"),
    (MessageTemplate("seasonal_promo", "en_US", [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]),
     "132015 Template is Paused"),
    (MessageTemplate("order_update", "en_US", [{"type": "body", "parameters": 5}]),
     "132012 Template Parameter Format Mismatch"),
    (MessageTemplate("order_update", "en_US", [{"type": "body", "parameters": [
        {"type": "text", "text": "x" * 1000}, {"type": "text", "text": "y" * 100}]}]),
     "132005 Template Hydrated Text Too Long"),
])
def test_the_mock_checks_templates(mock, template, code):
    gateway = _gateways(mock.url)[WA]
    with pytest.raises(PermanentError, match=code):
        gateway.send(_message(template=template), "k")
    assert mock.stats("whatsapp")["template_refused"] == 1


def test_template_in_the_cloud_api_shape(mock):
    gateway = _gateways(mock.url)[WA]
    assert httpx.post(f"{mock.url}/_mock/templates", json={"welcome": {"pt_BR": {"body": 1, "header": 1}}}
                      ).status_code == 200
    template = MessageTemplate("welcome", "pt_BR", [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/h.png"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}])
    message = _message(template=template)
    assert gateway.send(message, "k").provider_message_id.startswith("wamid.")
    assert gateway.body(message) == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": message.recipient,
        "type": "template", "template": {"name": "welcome", "language": {"code": "pt_BR"},
                                         "components": template.components}}
    hello = MessageTemplate("hello_world", "en_US")
    assert gateway.body(_message(template=hello))["template"] == {"name": "hello_world", "language": {"code": "en_US"}}
    with pytest.raises(PermanentError, match="instagram has no message templates"):
        _gateways(mock.url)[IG].send(_message(template=hello), "k")
    assert mock.stats("instagram")["requests"] == 0


def test_fail_for_a_count_then_recover(mock):
    gateway = _gateways(mock.url)[IG]
    mock.control(channel="instagram", mode="fail", status=500, count=2)
    outcomes = []
    for _ in range(3):
        try:
            gateway.send(_message(text="x"), new_id())
            outcomes.append("ok")
        except TransientError:
            outcomes.append("transient")
    assert outcomes == ["transient", "transient", "ok"]
    assert mock.stats("instagram")["mode"] == "ok"


def test_connection_errors_and_timeouts_are_transient(mock):
    closed = services.free_port()
    with pytest.raises(TransientError, match="ConnectError"):
        WhatsAppGateway(f"http://127.0.0.1:{closed}/whatsapp", "tok", "1", timeout=2).send(_message(text="x"), "k")
    # Slow: the mock takes the message, then answers after the client gave up.
    gateway = _gateways(mock.url, timeout=0.2)[WA]
    message = _message(text="x")
    mock.control(channel="whatsapp", mode="slow", delay_s=1.0, count=1)
    with pytest.raises(TransientError, match="timed out"):
        gateway.send(message, f"{message.id}:whatsapp")
    # The retry carries the same idempotency key: the mock answers the first answer, delivers nothing new.
    # Sent with the usual timeout: the 0.2 s one was for the slow answer only.
    receipt = _gateways(mock.url)[WA].send(message, f"{message.id}:whatsapp")
    record = mock.deliveries("whatsapp")[message.id]
    assert (record["accepted"], record["delivered"]) == (2, 1)
    assert receipt.provider_message_id == record["provider_message_id"]
    assert mock.stats("whatsapp")["accepted_more_than_once"] == [message.id]


def test_drop_mode_takes_the_message_and_closes_the_connection_without_an_answer(mock):
    """A channel that accepted a message whose answer never reached us: the gateway sees a
    transport error (retried); the retry with the same Idempotency-Key gets the first answer back
    and the user sees the message once."""
    gateway = _gateways(mock.url)[WA]
    message = _message(text="x")
    assert mock.control(channel="whatsapp", mode="drop", count=1).status_code == 200
    with pytest.raises(TransientError, match="whatsapp"):
        gateway.send(message, f"{message.id}:whatsapp")
    assert mock.deliveries("whatsapp")[message.id]["delivered"] == 1  # it was taken all the same
    receipt = gateway.send(message, f"{message.id}:whatsapp")  # count=1: back to ok
    record = mock.deliveries("whatsapp")[message.id]
    assert (record["accepted"], record["delivered"]) == (2, 1)
    assert receipt.provider_message_id == record["provider_message_id"]
    stats = mock.stats("whatsapp")
    assert (stats["dropped"], stats["replays"], stats["mode"]) == (1, 1, "ok")
    assert stats["accepted_more_than_once"] == [message.id]


def test_an_unconfigured_channel_is_a_permanent_error(mock):
    with pytest.raises(PermanentError, match="WHATSAPP_PHONE_NUMBER_ID"):
        WhatsAppGateway(f"{mock.url}/whatsapp", "tok", None).send(_message(text="x"), "k")
    with pytest.raises(PermanentError, match="token"):
        InstagramGateway(f"{mock.url}/instagram", None).send(_message(text="x"), "k")
    assert mock.stats("whatsapp")["requests"] == mock.stats("instagram")["requests"] == 0


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_server():
    servers = []

    def start(app):
        server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_webhook_handshake_signature_and_unknown_ids(webhook_server):
    recorded = []

    def record(channel, provider_id, status, error):
        if provider_id == "wamid.unknown":
            raise NotFound(provider_id)
        recorded.append((channel, provider_id))

    url = webhook_server(WebhookApp(record, verify_token="verify-me", secret="s3cret"))
    ok = httpx.get(f"{url}/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "verify-me",
                                                       "hub.challenge": "1158201444"})
    assert (ok.status_code, ok.text) == (200, "1158201444")
    assert httpx.get(f"{url}/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "no",
                                                         "hub.challenge": "1"}).status_code == 403
    from entrypoints.devtools.mock_channels import status_payload

    body = httpx.Request("POST", "/", json=status_payload("whatsapp", "wamid.1", "+1")).content
    unsigned = httpx.post(f"{url}/webhooks/whatsapp", content=body)
    assert unsigned.status_code == 403 and recorded == []
    signed = httpx.post(f"{url}/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign("s3cret", body)})
    assert signed.status_code == 200 and recorded == [(WA, "wamid.1")]
    ig = httpx.Request("POST", "/", json=status_payload("instagram", "mid.7", "1789")).content
    assert httpx.post(f"{url}/webhooks/instagram", content=ig,
                      headers={"X-Hub-Signature-256": sign("s3cret", ig)}).status_code == 200
    assert recorded[-1] == (IG, "mid.7")
    # An id not known yet: 503, so the channel reports it again later.
    early = httpx.Request("POST", "/", json=status_payload("whatsapp", "wamid.unknown", "+1")).content
    assert httpx.post(f"{url}/webhooks/whatsapp", content=early,
                      headers={"X-Hub-Signature-256": sign("s3cret", early)}).status_code == 503
    assert httpx.post(f"{url}/webhooks/sms", content=b"{}").status_code == 404


def test_service_on_sql_sends_through_the_mock_and_records_delivery_reports(database_url, webhook_server):
    """Create, route (all -> two deliveries), deliver both over HTTP; the mock reports each delivered
    through the webhook receiver, and both deliveries and the message end DELIVERED."""
    engine = make_engine(database_url)
    uow = uow_factory(engine)
    gateways = _gateways("http://placeholder")
    service = MessagingService(uow, gateways, lease_seconds=30)
    hook = webhook_server(WebhookApp(service.record_report))
    mock = Mock(status_webhook=f"{hook}/webhooks")
    try:
        for channel, gateway in gateways.items():
            gateway.base_url = f"{mock.url}/{channel.value}"
        message, _ = service.create(channel="all", recipient="+15550001", text="hello", conversation_id="c-9")
        mock.control(channel="instagram", mode="fail", status=502, count=1)
        for channel in service.route(message.id):
            try:
                service.deliver(message.id, channel)
            except TransientError:
                service.deliver(message.id, channel)  # what the retry does
        done = services.wait_for(lambda: (m := service.get(message.id)).status is MessageStatus.DELIVERED and m,
                                 timeout=30, message="both deliveries reported delivered")
        assert [(d.channel, d.status, d.attempts) for d in done.deliveries] == [
            (WA, MessageStatus.DELIVERED, 1), (IG, MessageStatus.DELIVERED, 2)]
        assert mock.deliveries("whatsapp")[message.id]["accepted"] == 1
        assert mock.deliveries("instagram")[message.id]["accepted"] == 1
        # Sending again (a redelivered message) sends nothing.
        service.deliver(message.id, WA)
        assert mock.stats("whatsapp")["requests"] == 1
        with uow() as u:
            statuses = [(e.payload["channel"], e.payload["status"]) for e in u.outbox.list(limit=500)
                        if e.type == "message.status" and e.aggregate_id == message.id]
        assert sorted(statuses) == sorted([("whatsapp", "SENT"), ("instagram", "SENT"),
                                           ("whatsapp", "DELIVERED"), ("instagram", "DELIVERED")])
    finally:
        mock.close()
        engine.dispose()


def test_failed_and_read_reports_in_any_order_never_move_a_delivery_back(database_url, webhook_server):
    """The mock reports each accepted message by webhook as told: read before delivered (both
    recorded, DELIVERED with read_at), failed with its errors (FAILED with code and title, even
    after SENT), and a late delivered after failed, or failed after read, changes nothing."""
    engine = make_engine(database_url)
    uow = uow_factory(engine)
    gateways = _gateways("http://placeholder")
    service = MessagingService(uow, gateways, lease_seconds=30)
    hook = webhook_server(WebhookApp(service.record_report))
    mock = Mock(status_webhook=f"{hook}/webhooks")
    try:
        for channel, gateway in gateways.items():
            gateway.base_url = f"{mock.url}/{channel.value}"

        def send(statuses, channel="whatsapp"):
            mock.control(channel=channel, statuses=statuses)
            message, _ = service.create(channel=channel, recipient=f"+1666{uuid.uuid4().int % 10**7:07d}",
                                        text="hello")
            for c in service.route(message.id):
                service.deliver(message.id, c)
            return message.id

        read_first = send(["read", "delivered"])
        failed = send(["sent", "failed", "delivered"])
        read_then_failed = send(["delivered", "read", "failed"])
        ig_read = send(["read"], channel="instagram")
        services.wait_for(lambda: mock.stats("whatsapp")["statuses_reported"] == 8
                          and mock.stats("instagram")["statuses_reported"] == 1, timeout=30,
                          message="every status reported")

        def delivery(message_id):
            return service.get(message_id).deliveries[0]

        d = delivery(read_first)
        assert (d.status, d.delivered_at is not None, d.read_at is not None) == (MessageStatus.DELIVERED, True, True)
        d = delivery(failed)
        assert d.status is MessageStatus.FAILED and service.get(failed).status is MessageStatus.FAILED
        assert d.last_error.startswith("whatsapp: 131026 Message undeliverable: mock: Message undeliverable")
        assert d.read_at is None and d.delivered_at is None
        d = delivery(read_then_failed)
        assert (d.status, d.last_error) == (MessageStatus.DELIVERED, None) and d.read_at is not None
        d = delivery(ig_read)
        assert d.status is MessageStatus.DELIVERED and d.read_at is not None
        with uow() as u:
            events = [(e.aggregate_id, e.payload["status"], bool(e.payload["read_at"]))
                      for e in u.outbox.list(limit=500)
                      if e.type == "message.status" and e.aggregate_id in (read_first, failed, read_then_failed)]
        assert sorted(events) == sorted([
            (read_first, "SENT", False), (read_first, "DELIVERED", True),
            (failed, "SENT", False), (failed, "FAILED", False),
            (read_then_failed, "SENT", False), (read_then_failed, "DELIVERED", False),
            (read_then_failed, "DELIVERED", True)])
        # A report applied again (the channel retries its webhooks) changes nothing more.
        assert not delivery(read_first).apply_report(ReportedStatus.READ, d.updated_at)
    finally:
        mock.close()
        engine.dispose()
