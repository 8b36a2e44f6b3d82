"""OutboxRelay with in-memory fakes: routing, batching, backoff, dead events, outages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import NotFound, PermanentError
from domain.models import OutboxEvent, new_id
from domain.services.outbox import OutboxRelay, Route, Router
from tests.unit.fakes import FakeOutboxUnitOfWork, FakePublisher

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class ManualClock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> datetime:
        return self.t


def _event(event_type: str = "image.processed", at: datetime = T0) -> OutboxEvent:
    event_id = new_id()
    return OutboxEvent(event_id, event_type, "image", event_id, {"k": 1}, "corr-1", at, next_attempt_at=at)


@pytest.fixture
def world():
    store: dict[str, OutboxEvent] = {}
    locked: set[str] = set()
    clock = ManualClock()
    publisher = FakePublisher()

    def relay(routes=(Route("image.*", "a"), Route("*", "audit")), **kw) -> OutboxRelay:
        return OutboxRelay(lambda: FakeOutboxUnitOfWork(store, locked), publisher, routes, clock=clock, **kw)

    def add(*events: OutboxEvent) -> None:
        for e in events:
            store[e.id] = e

    return store, clock, publisher, relay, add


def test_router_matches_wildcards_in_table_order_each_actor_once():
    router = Router([Route("image.*", "embed"), Route("image.processed", "embed"), Route("*", "audit"),
                     Route("message.status", "notify")])
    assert router.subscribers("image.processed") == ("embed", "audit")
    assert router.subscribers("message.status") == ("audit", "notify")
    assert router.subscribers("imagex") == ("audit",)
    assert Router([Route("image.*", "embed")]).subscribers("upload.completed") == ()


def test_each_event_goes_to_each_subscriber_with_its_dedup_key(world):
    store, _, publisher, relay, add = world
    img, upload = _event("image.processed"), _event("upload.completed")
    add(img, upload)
    stats = relay().relay()
    assert (stats.claimed, stats.published, stats.deliveries) == (2, 2, 3)
    sent = {(d.event.id, d.actor) for d in publisher.sent}
    assert sent == {(img.id, "a"), (img.id, "audit"), (upload.id, "audit")}
    assert {d.dedup_key for d in publisher.sent} == {f"{e}:{a}" for e, a in sent}
    # Subscribers receive the event as plain data.
    args = next(d.args for d in publisher.sent if d.actor == "a")
    assert args == ({"id": img.id, "type": "image.processed", "aggregate_type": "image", "aggregate_id": img.id,
                     "payload": {"k": 1}, "correlation_id": "corr-1", "created_at": T0.isoformat()},)
    assert all(store[e].published_at == T0 for e in (img.id, upload.id))
    assert sorted(publisher.notified) == sorted([img.id, upload.id])
    assert relay().relay().claimed == 0  # nothing is sent twice


def test_route_can_map_the_event_to_actor_arguments(world):
    _, _, publisher, relay, add = world
    e = _event()
    add(e)
    relay([Route("image.processed", "embed", args=lambda m: (m["aggregate_id"],))]).relay()
    assert [d.args for d in publisher.sent] == [(e.id,)]


def test_events_announced_only_are_published_and_announced(world):
    """A type the table declares with no subscriber (Router(..., announced=...)) is published."""
    store, _, publisher, relay, add = world
    e = _event("nobody.listens")
    add(e)
    stats = relay(routes=Router([Route("image.*", "a")], announced=["nobody.*"])).relay()
    assert stats.published == 1 and publisher.sent == [] and publisher.notified == [e.id]
    assert store[e.id].published_at is not None


def test_an_event_of_a_type_this_relay_does_not_know_waits_for_a_relay_that_does(world):
    """Issue 16, hole 3: a relay of an older version (its table lacks the new route) must not mark
    the event published with no delivery. It leaves it due, without spending an attempt, and
    after unrouted_grace it is dead with the reason; a relay that knows the type sends it."""
    store, clock, publisher, relay, add = world
    new_kind, known = _event("invoice.created"), _event("image.processed")
    add(new_kind, known)
    old = relay(routes=[Route("image.*", "a")], unrouted_grace_s=600, unrouted_recheck_s=30)
    stats = old.relay()
    assert (stats.published, stats.unrouted) == (1, 1)
    row = store[new_kind.id]
    assert row.published_at is None and not row.dead and row.attempts == 0
    assert "no route for event type 'invoice.created'" in row.last_error
    assert row.next_attempt_at == T0 + timedelta(seconds=30)  # not claimed first on every run
    assert publisher.notified == [known.id]
    # The new version's relay knows the type: it goes out.
    clock.t = T0 + timedelta(seconds=30)
    assert relay(routes=[Route("invoice.*", "bill")]).relay().published == 1
    assert [d.actor for d in publisher.sent if d.event.id == new_kind.id] == ["bill"]


def test_an_event_no_relay_knows_ends_dead_with_its_reason(world):
    store, clock, publisher, relay, add = world
    e = _event("typo.created")
    add(e)
    r = relay(routes=[Route("image.*", "a")], unrouted_grace_s=60, unrouted_recheck_s=30)
    for _ in range(2):
        r.relay()
        assert not store[e.id].dead
        clock.t = store[e.id].next_attempt_at
    stats = r.relay()  # 60 s after it was created
    assert stats.dead == 1 and store[e.id].dead and store[e.id].published_at is None
    assert "no route for event type 'typo.created'" in store[e.id].last_error
    assert [x.id for x in r.list_dead()] == [e.id] and publisher.notified == []


def test_a_route_whose_args_raise_fails_its_event_alone(world):
    """Issue 16, hole 6: an exception in one route's args must not roll back the batch for ever
    (that batch would be claimed first again on every run): the event gets its attempt counted,
    backs off, ends dead with the reason; the others go out."""
    store, clock, publisher, relay, add = world
    bad, good = _event("image.processed", at=T0 - timedelta(seconds=1)), _event("image.processed")
    bad.payload = {"k": "not a number"}
    add(bad, good)

    def args(message):
        return (int(message["payload"]["k"]),)

    r = relay(routes=[Route("image.*", "a", args=args), Route("*", "audit")], max_retries=1, backoff_ms=1000)
    stats = r.relay()
    assert (stats.published, stats.failed) == (1, 1)
    assert store[good.id].published_at is not None
    row = store[bad.id]
    assert row.attempts == 1 and not row.dead and row.published_at is None
    assert "ValueError" in row.last_error and "image.* -> a" in row.last_error
    assert row.next_attempt_at == T0 + timedelta(seconds=1)
    clock.t = row.next_attempt_at
    assert r.relay().dead == 1 and store[bad.id].dead


def test_relay_keeps_claiming_batches_until_nothing_is_due(world):
    store, _, publisher, relay, add = world
    add(*[_event() for _ in range(25)])
    stats = relay(batch_size=10).relay()
    assert (stats.batches, stats.published, stats.more_due) == (3, 25, False)
    assert all(e.published_at for e in store.values())


def test_relay_stops_when_its_budget_is_spent(world):
    _, _, _, relay, add = world
    add(*[_event() for _ in range(25)])
    stats = relay(batch_size=10).relay(budget_seconds=0)
    assert (stats.batches, stats.published, stats.more_due) == (1, 10, True)


def test_future_events_are_not_due_yet(world):
    _, clock, publisher, relay, add = world
    add(_event(at=T0 + timedelta(seconds=5)))
    assert relay().relay().claimed == 0
    clock.t = T0 + timedelta(seconds=5)
    assert relay().relay().published == 1


def test_failed_event_backs_off_1_2_4_seconds_then_is_dead(world):
    store, clock, publisher, relay, add = world
    publisher.refuse = {"a"}
    e = _event()
    add(e)
    r = relay(max_retries=3, backoff_ms=1000)
    waits = []
    for attempt in range(1, 5):
        stats = r.relay()
        assert stats.failed == 1
        row = store[e.id]
        assert row.attempts == attempt and "no actor named 'a'" in row.last_error
        if attempt < 4:
            assert not row.dead
            waits.append((row.next_attempt_at - clock.t).total_seconds())
            assert r.relay().claimed == 0  # not due during its backoff
            clock.t = row.next_attempt_at
        else:
            assert row.dead and stats.dead == 1
    assert waits == [1.0, 2.0, 4.0]
    clock.t += timedelta(hours=1)
    assert r.relay().claimed == 0  # dead events stay out of the relay
    assert [d.id for d in r.list_dead()] == [e.id]
    assert store[e.id].published_at is None
    # The other subscriber got it on each try, with the same dedup key each time.
    assert {d.dedup_key for d in publisher.sent} == {f"{e.id}:audit"} and len(publisher.sent) == 4


def test_retry_makes_a_dead_event_due_again(world):
    store, clock, publisher, relay, add = world
    publisher.refuse = {"a"}
    e = _event()
    add(e)
    r = relay(max_retries=0)
    r.relay()
    assert store[e.id].dead
    publisher.refuse = set()
    revived = r.retry(e.id)
    assert (revived.dead, revived.attempts) == (False, 0)
    assert r.relay().published == 1 and store[e.id].published_at is not None
    with pytest.raises(PermanentError):
        r.retry(e.id)
    with pytest.raises(NotFound):
        r.retry(new_id())


def test_broker_down_leaves_events_waiting_with_no_attempt_spent(world):
    store, _, publisher, relay, add = world
    events = [_event() for _ in range(5)]
    add(*events)
    publisher.down = True
    stats = relay(max_retries=0).relay()
    assert stats.broker_down and stats.published == 0
    assert all(store[e.id].published_at is None and store[e.id].attempts == 0 and not store[e.id].dead
               for e in events)
    publisher.down = False
    assert relay(max_retries=0).relay().published == 5


def test_crash_between_enqueue_and_commit_resends_with_the_same_dedup_keys(world):
    store, _, publisher, relay, add = world
    e = _event()
    add(e)

    def crash() -> None:
        raise RuntimeError("process died")

    publisher.on_enqueue = crash
    with pytest.raises(RuntimeError):
        relay().relay()
    assert store[e.id].published_at is None  # the transaction never committed
    publisher.on_enqueue = None
    relay().relay()
    keys = [d.dedup_key for d in publisher.sent]
    assert sorted(keys) == sorted([f"{e.id}:a", f"{e.id}:audit"] * 2)


def test_parallel_relays_do_not_claim_the_same_events(world):
    """A claim holds its rows until the transaction ends; a second relay skips them."""
    store, clock, publisher, relay, add = world
    add(*[_event() for _ in range(4)])
    inner: list[int] = []
    second = relay(batch_size=3)

    def run_second_relay_mid_batch() -> None:
        if publisher.on_enqueue is not None:
            publisher.on_enqueue = None  # the second relay enqueues too
            inner.append(second.relay_batch().claimed)

    publisher.on_enqueue = run_second_relay_mid_batch
    first = relay(batch_size=3).relay_batch()
    assert (first.claimed, inner) == (3, [1])
    assert sorted(d.event.id for d in publisher.sent if d.actor == "a") == sorted(store)


def test_every_event_type_the_code_records_is_in_the_routing_tables():
    """A type missing from both tables would wait for a relay that knows it, then die."""
    import ast

    from bootstrap.routing import ANNOUNCED, ROUTES
    from tests.services import ROOT

    recorded = set()
    for path in (ROOT / "domain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DomainEvent" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                recorded.add(node.args[0].value)
    assert {"image.uploaded", "message.created", "upload.completed"} <= recorded
    router = Router(ROUTES, ANNOUNCED)
    assert [t for t in sorted(recorded) if not router.knows(t)] == []
