"""What the delivery-status webhook receiver reads from Meta's payloads (entrypoints/webhooks.py):
WhatsApp's statuses with a failure's errors, Instagram's deliveries and reads, and junk."""

from __future__ import annotations

import pytest

from domain.models import MessageChannel, ReportedStatus
from entrypoints.devtools.mock_channels import status_payload
from entrypoints.webhooks import delivered_ids, status_reports

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


def test_whatsapp_statuses_in_order_with_the_failures_code_title_and_hint():
    payload = status_payload("whatsapp", "wamid.1", "+1", "failed", failed_code=131047)
    payload["entry"][0]["changes"][0]["value"]["statuses"] += [
        {"id": "wamid.2", "status": "read"}, {"id": "wamid.3", "status": "deleted"}, {"status": "read"},
        {"id": "wamid.4", "status": "delivered"}, {"id": "wamid.5", "status": "sent"}]
    reports = status_reports(WA, payload)
    assert [(i, s) for i, s, _ in reports] == [
        ("wamid.1", ReportedStatus.FAILED), ("wamid.2", ReportedStatus.READ), ("wamid.4", ReportedStatus.DELIVERED),
        ("wamid.5", ReportedStatus.SENT)]
    assert reports[0][2] == ("whatsapp: 131047 Re-engagement message: mock: Re-engagement message (reported by "
                             "webhook; more than 24 hours passed since the customer last wrote: outside the "
                             "customer-service window only a template message can be sent, so send a template)")
    assert delivered_ids(WA, payload) == ["wamid.2", "wamid.4"]


def test_a_failure_with_a_code_not_in_the_table_keeps_metas_title():
    payload = {"entry": [{"changes": [{"value": {"statuses": [{"id": "w", "status": "failed", "errors": [
        {"code": 139999, "title": "Something new", "error_data": {"details": "why"}}]}]}}]}]}
    assert status_reports(WA, payload) == [("w", ReportedStatus.FAILED,
                                            "whatsapp: 139999 Something new: why (reported by webhook)")]
    no_errors = {"entry": [{"changes": [{"value": {"statuses": [{"id": "w", "status": "failed"}]}}]}]}
    assert status_reports(WA, no_errors)[0][2] == "whatsapp: no code failed: no details (reported by webhook)"


def test_instagram_deliveries_and_reads():
    assert status_reports(IG, status_payload("instagram", "mid.1", "1789")) == [
        ("mid.1", ReportedStatus.DELIVERED, None)]
    assert status_reports(IG, status_payload("instagram", "mid.2", "1789", "read")) == [
        ("mid.2", ReportedStatus.READ, None)]
    assert status_payload("instagram", "mid.3", "1789", "failed") is None  # Instagram has no such report


@pytest.mark.parametrize("payload", [
    None, [], "x", {"entry": "x"}, {"entry": [1, None, "x"]}, {"entry": [{"changes": {"a": 1}}]},
    {"entry": [{"changes": [{"value": [1]}]}]}, {"entry": [{"changes": [{"value": {"statuses": {"id": 1}}}]}]},
    {"entry": [{"changes": [{"value": {"statuses": [{"id": 5, "status": "read"}, "x"]}}]}]},
    {"entry": [{"messaging": [{"delivery": {"mids": "mid.1"}, "read": ["mid.2"]}, 7]}]},
    {"entry": [{"messaging": [{"delivery": {"mids": [1, None]}, "read": {"mid": 3}}]}]},
])
def test_junk_is_ignored_never_raises(payload):
    assert status_reports(WA, payload) == [] and status_reports(IG, payload) == []


def _call(app, method: str, *, query: str = "", body: bytes = b"", headers: dict | None = None):
    import io

    from entrypoints.webhooks import WebhookApp  # noqa: F401  (the app under test is passed in)

    answer: list[str] = []
    environ = {"PATH_INFO": "/webhooks/whatsapp", "REQUEST_METHOD": method, "QUERY_STRING": query,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), **(headers or {})}
    text = b"".join(app(environ, lambda status, _headers: answer.append(status)))
    return answer[0], text


def test_junk_requests_get_an_answer_not_a_crash():
    """A verify token that is not ASCII, a body nested past json's recursion limit and a channel
    message id with a NUL (PostgreSQL refuses it in a query) are refused or ignored with an answer,
    not a traceback and a 500 (for which the channel would send the same body again and again)."""
    from entrypoints.webhooks import WebhookApp, sign

    recorded = []

    def record(channel, provider_id, status, error):
        assert "\x00" not in provider_id  # what the database would refuse
        recorded.append(provider_id)

    app = WebhookApp(record, verify_token="tok", secret="s")
    assert _call(app, "GET", query="hub.mode=subscribe&hub.verify_token=%C3%A9&hub.challenge=1")[0] == \
        "403 Forbidden"
    assert _call(app, "GET", query="hub.mode=subscribe&hub.verify_token=tok&hub.challenge=1") == ("200 OK", b"1")
    deep = b"[" * 100_000
    assert _call(app, "POST", body=deep, headers={"HTTP_X_HUB_SIGNATURE_256": sign("s", deep)})[0] == \
        "400 Bad Request"
    import json

    nul = json.dumps(status_payload("whatsapp", "wamid.\x00x", "+1")).encode()
    assert _call(app, "POST", body=nul, headers={"HTTP_X_HUB_SIGNATURE_256": sign("s", nul)})[0] == "200 OK"
    assert recorded == []
