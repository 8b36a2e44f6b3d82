"""The HTTP channel gateways against the real mock-channels server on 127.0.0.1, the status
webhooks, and MessagingService on real SQL with both."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

from adapters.channels.http import InstagramGateway, WhatsAppGateway, parse_retry_after
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.errors import NotFound, PermanentError, TransientError
from domain.models import MessageChannel, MessageStatus, OutboundMessage, new_id
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
    return OutboundMessage(id=new_id(), channel=channel, recipient=kw.pop("recipient", "+15550001"), **kw)


def test_whatsapp_text_in_the_cloud_api_shape(mock):
    gateway = _gateways(mock.url)[WA]
    message = _message(text="hello")
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
                                                                   recipient="1789")
    assert gateway.send(text, "a").provider_message_id.startswith("mid.")
    assert gateway.send(image, "b").provider_message_id.startswith("mid.")
    assert gateway.body(text) == {"recipient": {"id": "1789"}, "message": {"text": "hi"}}
    assert gateway.url().endswith("/instagram/me/messages")
    assert set(mock.deliveries("instagram")) == {text.id, image.id}
    assert mock.stats("whatsapp")["requests"] == 0


def test_the_mock_refuses_what_the_api_would(mock):
    no_token = httpx.post(f"{mock.url}/whatsapp/1/messages", json={"messaging_product": "whatsapp", "to": "1",
                                                                     "type": "text", "text": {"body": "x"}})
    assert no_token.status_code == 401 and no_token.json()["error"]["code"] == 190
    bad = httpx.post(f"{mock.url}/instagram/me/messages", json={"recipient": {"id": "1"}},
                     headers={"Authorization": "Bearer t"})
    assert bad.status_code == 400 and "message" in bad.json()["error"]["message"]
    assert mock.control(mode="explode").status_code == 400
    assert mock.control(channel="sms").status_code == 400


def test_5xx_is_transient_4xx_permanent_429_carries_retry_after(mock):
    gateway = _gateways(mock.url)[WA]
    message = _message(text="x")
    mock.control(channel="whatsapp", mode="fail", status=503)
    with pytest.raises(TransientError, match="503"):
        gateway.send(message, "k")
    mock.control(channel="whatsapp", mode="fail", status=400)
    with pytest.raises(PermanentError, match="400: mock whatsapp failure"):
        gateway.send(message, "k")
    mock.control(channel="whatsapp", mode="ratelimit", retry_after=2)
    with pytest.raises(TransientError, match="429") as limited:
        gateway.send(message, "k")
    assert limited.value.retry_after == 2
    assert mock.deliveries("whatsapp") == {}  # none of those reached the user
    mock.control(channel="whatsapp", mode="ok")
    assert gateway.send(message, "k").provider_message_id
    stats = mock.stats("whatsapp")
    assert (stats["failed"], stats["rate_limited"], stats["delivered"]) == (2, 1, 1)


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
    receipt = gateway.send(message, f"{message.id}:whatsapp")
    record = mock.deliveries("whatsapp")[message.id]
    assert (record["accepted"], record["delivered"]) == (2, 1)
    assert receipt.provider_message_id == record["provider_message_id"]
    assert mock.stats("whatsapp")["accepted_more_than_once"] == [message.id]


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

    def record(channel, provider_id):
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
    hook = webhook_server(WebhookApp(lambda channel, pid: service.record_status(channel, pid,
                                                                                MessageStatus.DELIVERED)))
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
