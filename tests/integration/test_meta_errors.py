"""Meta's error codes, one test per row of the reference table (adapters/channels/meta_errors.py):
the real mock-channels server answers the row's code in Meta's envelope, and the gateway must
classify it by that code (the outcome, the rate limit's scope and wait) with the code, the title
and the fbtrace_id in the reason. Then what is not in the table: unknown codes fall back to the
HTTP status, and answers with no envelope at all."""

from __future__ import annotations

import httpx
import pytest

from adapters.channels.http import InstagramGateway, WhatsAppGateway
from adapters.channels.meta_errors import REFERENCE, SOURCES, MetaCode, Outcome, classify, lookup
from domain.errors import PermanentError, RateLimited, TransientError
from domain.models import MessageChannel, OutboundMessage, new_id
from tests.integration.test_channels import Mock

PAIR_INTERVAL = 6.0


@pytest.fixture(scope="module")
def mock():
    m = Mock()
    m.control(limits={"throughput": None, "pair_interval_s": None})
    yield m
    m.close()


def _rows() -> list[tuple[str, MetaCode]]:
    return [(channel, row) for row in REFERENCE for channel in sorted(row.channels)]


def _gateway(mock: Mock, channel: str):
    if channel == "whatsapp":
        return WhatsAppGateway(f"{mock.url}/whatsapp", "tok", "12345", timeout=5, pair_interval_s=PAIR_INTERVAL)
    return InstagramGateway(f"{mock.url}/instagram", "tok", timeout=5, pair_interval_s=PAIR_INTERVAL)


@pytest.mark.parametrize(("channel", "row"), _rows(),
                         ids=[f"{c}-{r.code}" + (f"-{r.subcode}" if r.subcode else "") for c, r in _rows()])
def test_each_code_of_the_reference_is_classified_by_its_code(mock, channel, row):
    # The last code of a range stands for it; the HTTP status is Meta's for the code (400 mostly).
    code = row.last or row.code
    mode = "ratelimit" if row.outcome is Outcome.RATE_LIMITED else "fail"
    status = {Outcome.TRANSIENT: 503, Outcome.PERMANENT: 400, Outcome.RATE_LIMITED: 400}[row.outcome]
    assert mock.control(channel=channel, mode=mode, code=code, subcode=row.subcode, status=status,
                        count=1).status_code == 200
    message = OutboundMessage(id=new_id(), channel=MessageChannel(channel), recipient="+15550001", text="x")
    with pytest.raises((PermanentError, TransientError)) as raised:
        _gateway(mock, channel).send(message, "k")
    error = raised.value
    expected = {Outcome.PERMANENT: PermanentError, Outcome.TRANSIENT: TransientError,
                Outcome.RATE_LIMITED: RateLimited}[row.outcome]
    assert type(error) is expected
    number = f"{code}/{row.subcode}" if row.subcode else f"{code}"
    assert str(error).startswith(f"{channel}: {number} {row.title}: mock {channel} ")
    assert f"HTTP {status}, fbtrace_id " in str(error) and row.hint in str(error)
    if row.outcome is Outcome.RATE_LIMITED:
        assert error.scope == row.scope
        assert error.retry_after == (PAIR_INTERVAL if row.scope == "recipient" else row.wait_s)
    elif row.outcome is Outcome.TRANSIENT:
        assert error.retry_after == row.wait_s  # None: the ordinary backoff
    assert row.source in SOURCES


def test_every_row_is_unique_and_applies_to_a_channel():
    keys = [(channel, row.code, row.subcode) for channel, row in _rows()]
    assert len(keys) == len(set(keys))
    assert all(row.channels <= {"whatsapp", "instagram"} and row.channels for row in REFERENCE)
    assert all(lookup(c, r.code, r.subcode) is r for c, r in _rows())


def test_a_subcode_row_wins_and_an_unknown_subcode_falls_back_to_the_code():
    assert lookup("instagram", 10, 2018278).title == "Message sent outside of allowed window"
    assert lookup("instagram", 10, 1).title == "Permission denied"
    assert lookup("whatsapp", 10, 2018278).title == "Permission denied"  # an Instagram row only
    assert lookup("whatsapp", 131047) and lookup("instagram", 131047) is None
    assert lookup("whatsapp", 250).title == "API Permission" and lookup("whatsapp", 300) is None


@pytest.mark.parametrize(("status", "expected", "retry_after"), [
    (429, RateLimited, 1.0), (500, TransientError, None), (503, TransientError, None),
    (400, PermanentError, None), (404, PermanentError, None), (302, PermanentError, None)])
def test_an_unknown_code_falls_back_to_the_http_status(status, expected, retry_after):
    body = {"error": {"message": "(#999999) Something new", "type": "OAuthException", "code": 999999,
                      "fbtrace_id": "Abc123"}}
    error = classify("whatsapp", status, body)
    assert type(error) is expected and getattr(error, "retry_after", None) == retry_after
    assert str(error).startswith("whatsapp: 999999 OAuthException: Something new (not in atelier's table")
    assert f"HTTP {status}, fbtrace_id Abc123" in str(error)


def test_answers_without_meta_envelope_go_by_status_and_keep_what_was_said():
    proxy = classify("instagram", 502, None, raw="<html>Bad gateway</html>")
    assert type(proxy) is TransientError and "no code unknown: <html>Bad gateway</html>" in str(proxy)
    limited = classify("instagram", 429, "not json", retry_after=7)
    assert type(limited) is RateLimited and limited.retry_after == 7 and limited.scope == "sender"
    weird = classify("whatsapp", 400, {"error": {"code": True, "message": ["x"]}})
    assert type(weird) is PermanentError and "no code" in str(weird)
    text_code = classify("whatsapp", 400, {"error": {"code": "131056", "message": "(#131056) pair rate limit"}},
                         pair_interval_s=6)
    assert type(text_code) is RateLimited and text_code.scope == "recipient" and text_code.retry_after == 6


def test_retry_after_is_a_floor_never_a_cut():
    body = {"error": {"code": 131056, "message": "(#131056) pair rate limit hit"}}
    assert classify("whatsapp", 400, body, retry_after=1, pair_interval_s=6).retry_after == 6
    assert classify("whatsapp", 400, body, retry_after=20, pair_interval_s=6).retry_after == 20
    temporary = {"error": {"code": 131000, "message": "(#131000) Something went wrong"}}
    assert classify("whatsapp", 500, temporary, retry_after=3).retry_after == 3
    assert classify("whatsapp", 500, temporary).retry_after is None


def test_a_reason_is_bounded_whatever_the_channel_says():
    body = {"error": {"code": 100, "message": "x" * 100_000, "fbtrace_id": "y" * 10_000,
                      "error_data": {"details": "z" * 100_000}}}
    assert len(str(classify("whatsapp", 400, body))) <= 1500


def test_the_gateway_reads_a_non_json_error_body(mock):
    # A 5xx from something in front of Meta, with no JSON: transient, by its status.
    message = OutboundMessage(id=new_id(), channel=MessageChannel.WHATSAPP, recipient="+1", text="x")
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>bad gateway</html>"))
    gateway = WhatsAppGateway("http://meta.invalid", "tok", "1", client=httpx.Client(transport=transport))
    with pytest.raises(TransientError, match="no code unknown: <html>bad gateway</html>"):
        gateway.send(message, "k")


@pytest.mark.parametrize("answer", [{"messages": [{"id": {"x": 1}}]}, {"messages": [{"id": "wamid.\x00"}]},
                                    {"messages": [{"id": 7}]}, {"messages": [{"id": "w" * 300}]}])
def test_an_accepted_answer_whose_id_cannot_be_stored_is_taken_without_an_id(answer):
    """An id no delivery row can hold (not a string, a NUL, longer than the column) made every
    record of the send fail: its receipt was retried for days, then the sweep sent it again."""
    message = OutboundMessage(id=new_id(), channel=MessageChannel.WHATSAPP, recipient="+1", text="x")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    gateway = WhatsAppGateway("http://meta.invalid", "tok", "1", client=httpx.Client(transport=transport))
    assert gateway.send(message, "k").provider_message_id is None
