"""The message repository on real PostgreSQL and SQLite."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import MessageChannel, MessageStatus, OutboundMessage, new_id, utcnow

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def uow(engine):
    return uow_factory(engine)


def _message(**kw) -> OutboundMessage:
    now = utcnow()
    fields = dict(id=new_id(), channel=MessageChannel.ALL, recipient="+15550001", text="hello", sender="shop",
                  conversation_id="conv-1", created_at=now, updated_at=now)
    fields.update(kw)
    return OutboundMessage(**fields)


def test_roundtrip_with_deliveries(uow):
    message = _message()
    with uow() as u:
        assert u.messages.add(message)
        u.commit()
    now = utcnow()
    with uow() as u:
        got = u.messages.get_for_update(message.id)
        assert got.deliveries == []
        got.plan_deliveries(now)
        got.delivery(WA).start_attempt(now, now + timedelta(seconds=30))
        got.delivery(WA).mark_sent("wamid.1", now)
        got.delivery(IG).start_attempt(now, now + timedelta(seconds=30))
        got.delivery(IG).attempt_failed("503", now)
        got.refresh_status(now)
        u.messages.save(got)
        u.commit()
    with uow() as u:
        stored = u.messages.get(message.id)
        assert u.messages.find_by_provider_id("whatsapp", "wamid.1") == message.id
        assert u.messages.find_by_provider_id("instagram", "wamid.1") is None
    assert [(d.channel, d.status, d.attempts) for d in stored.deliveries] == [
        (WA, MessageStatus.SENT, 1), (IG, MessageStatus.PENDING, 1)]
    assert stored.delivery(WA).sent_at == now and stored.delivery(WA).sent_at.tzinfo is not None
    assert stored.delivery(IG).last_error == "503" and stored.delivery(IG).sending_until is None
    assert (stored.text, stored.sender, stored.conversation_id, stored.status) == (
        "hello", "shop", "conv-1", MessageStatus.PENDING)


def test_add_of_an_existing_id_changes_nothing(uow):
    message = _message()
    with uow() as u:
        assert u.messages.add(message)
        u.commit()
    with uow() as u:
        assert not u.messages.add(_message(id=message.id, text="other"))
        u.commit()
    with uow() as u:
        assert u.messages.get(message.id).text == "hello"


def test_rollback_leaves_no_message(uow):
    message = _message()
    with uow() as u:
        u.messages.add(message)
    with uow() as u:
        assert u.messages.get(message.id) is None


def test_concurrent_creates_of_one_id_make_one_row(uow):
    """Producers racing with the same id: ON CONFLICT DO NOTHING, no error, one row."""
    message = _message()
    results, errors = [], []
    barrier = threading.Barrier(4)

    def create():
        try:
            barrier.wait()
            with uow() as u:
                results.append(u.messages.add(_message(id=message.id)))
                u.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and sorted(results) == [False, False, False, True]


def test_pending_deliveries_gauge(database_url, engine, uow):
    """atelier_message_deliveries_pending{channel}, as the ops server reads it at scrape time."""
    from bootstrap import Container
    from bootstrap.settings import load_settings

    container = Container(load_settings(database_url=database_url))
    (spec,) = [m for m in container.metrics if m.name == "atelier_message_deliveries_pending"]
    before = spec.read()
    message = _message()
    now = utcnow()
    message.plan_deliveries(now)
    message.delivery(WA).mark_sent("wamid.x", now)
    with uow() as u:
        u.messages.add(message)
        u.commit()
    after = spec.read()
    container.close()
    assert spec.labels == ("channel",)
    assert after[("instagram",)] - before[("instagram",)] == 1
    assert after[("whatsapp",)] == before[("whatsapp",)]  # that one is SENT


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_msg1_goes_down_and_up(backend, tmp_path):
    from sqlalchemy import inspect

    from adapters.sql.migrate import downgrade, upgrade
    from tests import services

    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else services.create_pg_database()
    try:
        upgrade(url)
        downgrade(url, "upl1")
        engine = make_engine(url)
        assert not {"outbound_messages", "message_deliveries"} & set(inspect(engine).get_table_names())
        engine.dispose()
        upgrade(url)
        engine = make_engine(url)
        indexes = {i["name"] for i in inspect(engine).get_indexes("message_deliveries")}
        engine.dispose()
        assert {"ix_message_deliveries_provider", "ix_message_deliveries_status"} <= indexes
    finally:
        if backend == "postgresql":
            services.drop_pg_database(url)


def test_stale_deliveries_on_sql_and_two_sweeps_never_take_the_same_one(uow, engine):
    """The sweep's query (issue 16, hole 2): PENDING with no lease and idle, or an expired lease
    and idle for the long bound; never a live lease, never a final delivery. On PostgreSQL a
    second sweep running meanwhile skips the rows the first holds."""
    t0 = utcnow() - timedelta(hours=3)
    idle, leased, unknown, sent = (_message(channel=WA) for _ in range(4))
    with uow() as u:
        for m in (idle, leased, unknown, sent):
            m.plan_deliveries(t0)
            u.messages.add(m)
        leased.delivery(WA).start_attempt(t0, t0 + timedelta(days=1))
        unknown.delivery(WA).start_attempt(t0, t0 + timedelta(seconds=60))
        sent.delivery(WA).mark_sent("wamid.x", t0)
        for m in (leased, unknown, sent):
            u.messages.save(m)
        u.commit()
    ours = {idle.id, leased.id, unknown.id, sent.id}
    now = utcnow()

    def stale(u, unknown_for: timedelta) -> list:  # type: ignore[no-untyped-def]
        found = u.messages.stale_deliveries(now=now, idle_before=now - timedelta(hours=1),
                                            unknown_before=now - unknown_for, limit=10_000)
        return [(m, c) for m, c in found if m in ours]

    with uow() as u:
        assert stale(u, timedelta(days=1)) == [(idle.id, WA)]
        assert sorted(stale(u, timedelta(hours=2))) == sorted([(idle.id, WA), (unknown.id, WA)])
        u.messages.touch_deliveries([(idle.id, WA)], now)
        u.commit()
    with uow() as u:
        assert stale(u, timedelta(days=1)) == []
        assert u.messages.get(idle.id).delivery(WA).updated_at == now

    if engine.dialect.name != "postgresql":
        return
    with uow() as first:
        assert stale(first, timedelta(hours=2)) == [(unknown.id, WA)]
        taken: list = []

        def second_sweep() -> None:
            with uow() as u:
                taken.extend(stale(u, timedelta(hours=2)))

        thread = threading.Thread(target=second_sweep)
        thread.start()
        thread.join(30)
        assert not thread.is_alive() and taken == []  # skipped, not waited for


def test_a_channels_answer_with_a_nul_is_recorded_not_refused_by_the_database(uow):
    """PostgreSQL refuses a NUL in text (and UTF-8 a lone surrogate). A channel's error (its details,
    or the raw body of a proxy's error page) or a failed webhook's details carrying one made
    recording the outcome fail: a
    transient answer left the lease held and the retry waiting for it, a permanent one was retried
    (sent again) instead of FAILED, and a failed report answered 500 for ever."""
    from domain.errors import PermanentError, TransientError
    from domain.models import ReportedStatus
    from domain.services.messaging import MessagingService
    from tests.unit.fakes import FakeChannelGateway

    gateway = FakeChannelGateway("wa")
    service = MessagingService(uow, {WA: gateway}, lease_seconds=60)
    first, _ = service.create(channel="whatsapp", recipient="+15550001", text="hi")
    gateway.fail_with = [TransientError("whatsapp: no code unknown: \x00\x01junk (HTTP 502)"),
                         PermanentError("whatsapp: 100 Invalid parameter: bad \x00 value \ud800")]
    with pytest.raises(TransientError):
        service.deliver(first.id, WA)
    delivery = service.get(first.id).delivery(WA)
    assert delivery.sending_until is None and "junk" in delivery.last_error  # the retry need not wait
    with pytest.raises(PermanentError):
        service.deliver(first.id, WA)
    delivery = service.get(first.id).delivery(WA)
    assert delivery.status is MessageStatus.FAILED and "bad" in delivery.last_error

    second, _ = service.create(channel="whatsapp", recipient="+15550001", text="again")
    service.deliver(second.id, WA)
    service.record_report(WA, "wa-1", ReportedStatus.FAILED, "whatsapp: 131026 Message undeliverable: \x00")
    assert service.get(second.id).delivery(WA).status is MessageStatus.FAILED
