"""Pacing: the in-memory pacer's rules on a fake clock, a Paced message on the whole middleware
stack (parked, no retry spent, not counted by the circuit breaker, counted as skipped), rate-limit
answers and the circuit, and MessagingService asking the pacer before each attempt."""

from __future__ import annotations

import dramatiq
import pytest

from adapters.state.pacing import InMemoryPacer, PaceRule
from domain.errors import Paced, RateLimited
from domain.models import MessageChannel, MessageStatus
from domain.resilience import CircuitState
from domain.services.messaging import MessagingService
from middleware.circuit import is_dependency_failure
from tests.unit.fakes import FakeChannelGateway, FakeMessagingUnitOfWork

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000.0

    def __call__(self) -> float:
        return self.ms


def _pacer(rate=3, pair=2.0, margin=100):
    clock = Clock()
    return InMemoryPacer({WA: PaceRule("n1", rate, pair)}, margin_ms=margin, clock=clock), clock


def test_the_send_rate_allows_its_limit_per_window_plus_margin_then_queues():
    pacer, clock = _pacer(rate=3, pair=0)
    assert [pacer.acquire(WA, f"r{i}", f"m{i}") for i in range(3)] == [0.0, 0.0, 0.0]
    # The 4th waits until the first slot leaves the 1.1 s window; the next waiters one spacing
    # (1.1 s / 3) after each other, each keeping its place in line.
    waits = [pacer.acquire(WA, f"r{i}", f"m{i}") for i in range(3, 6)]
    assert waits == pytest.approx([1.1, 1.1 + 1.1 / 3, 1.1 + 2.2 / 3])
    assert pacer.acquire(WA, "r3", "m3") == pytest.approx(1.1)  # asking again: the same place
    clock.ms += 1100
    assert pacer.acquire(WA, "r3", "m3") == 0.0  # its time came
    assert pacer.acquire(WA, "r4", "m4") == pytest.approx(1.1 / 3)


def test_a_newcomer_queues_behind_the_waiters_instead_of_taking_their_slot():
    pacer, clock = _pacer(rate=2, pair=0)
    pacer.acquire(WA, "a", "m1"), pacer.acquire(WA, "b", "m2")
    first = pacer.acquire(WA, "c", "waiter")  # promised 1.1 s from now
    clock.ms += 1100 + 300  # the slot is free, but the waiter (parked) is late
    assert pacer.acquire(WA, "d", "newcomer") == pytest.approx(0.25, abs=0.01)  # behind it, one spacing later
    assert pacer.acquire(WA, "c", "waiter") == 0.0  # late, still first
    assert first == pytest.approx(1.1)
    clock.ms += 250
    assert pacer.acquire(WA, "d", "newcomer") == 0.0


def test_a_promise_nobody_claims_is_forgotten_after_the_grace():
    pacer, clock = _pacer(rate=1, pair=0)
    pacer.acquire(WA, "a", "m1")
    assert pacer.acquire(WA, "b", "vanished") > 0  # promised, then done elsewhere: never comes back
    clock.ms += 1100 + 10_001
    assert pacer.acquire(WA, "c", "m3") == 0.0  # not queued behind a promise no one will claim


def test_a_refusal_takes_nothing():
    pacer, clock = _pacer(rate=1, pair=10)
    assert pacer.acquire(WA, "a", "m1") == 0.0
    assert pacer.acquire(WA, "a", "m2") > 0  # the pair: nothing of the number's rate taken
    clock.ms += 1100
    assert pacer.acquire(WA, "b", "m3") == 0.0  # the number's one slot is free again


def test_the_pair_rate_is_per_recipient_and_waits_the_interval():
    pacer, clock = _pacer(rate=100, pair=6.0)
    assert pacer.acquire(WA, "ann", "m1") == 0.0
    assert pacer.acquire(WA, "bob", "m2") == 0.0
    assert pacer.acquire(WA, "ann", "m3") == pytest.approx(6.1)
    assert pacer.acquire(WA, "ann", "m4") == pytest.approx(12.2)  # the next one in line after it
    clock.ms += 6100
    assert pacer.acquire(WA, "ann", "m4") == pytest.approx(6.1)  # m3 is first
    assert pacer.acquire(WA, "ann", "m3") == 0.0


def test_hold_stops_a_number_or_one_recipient_for_a_while():
    pacer, clock = _pacer(rate=100, pair=0)
    pacer.hold(WA, "ann", 5)
    assert pacer.acquire(WA, "ann", "m1") == pytest.approx(5.0)
    assert pacer.acquire(WA, "bob", "m2") == 0.0
    pacer.hold(WA, None, 2)
    assert pacer.acquire(WA, "carl", "m3") == pytest.approx(2.0)
    pacer.hold(WA, None, 0.5)  # a shorter hold never shortens a longer one
    assert pacer.acquire(WA, "carl", "m3") == pytest.approx(2.0)
    clock.ms += 5000
    assert pacer.acquire(WA, "carl", "m3") == 0.0  # the waiter first
    assert pacer.acquire(WA, "ann", "m1") == 0.0
    pacer.hold(WA, None, 86_400)  # a Retry-After of a day holds the number an hour at most
    assert pacer.acquire(WA, "dan", "m4") == pytest.approx(3600)


def test_unpaced_channels_and_rates_of_zero_always_go():
    pacer, _ = _pacer(rate=0, pair=0)
    assert all(pacer.acquire(WA, "same", f"m{i}") == 0.0 for i in range(100))
    assert pacer.acquire(IG, "no rule", "m") == 0.0
    pacer.hold(IG, None, 10)  # no rule: nothing to hold
    assert pacer.acquire(IG, "x", "m") == 0.0


# --- the middleware ---

def _paced_actor(stack, waits, **options):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", throws=(Paced,), max_retries=0, **options)
    def send(n):
        runs.append(n)
        if waits:
            raise Paced("over the rate", wait_s=waits.pop(0))

    return send, runs


def test_a_paced_message_is_parked_without_spending_a_retry(stack):
    """max_retries=0: one real failure would dead-letter it; five paced waits do not."""
    send, runs = _paced_actor(stack, [0.01] * 5)
    send.send(1)
    stack.join()
    assert runs == [1] * 6
    assert stack.letters.letters == {}
    assert stack.count("atelier_messages_skipped_total") == {("q", "send"): 5}
    assert stack.count("dramatiq_message_errors_total") == {}


def test_paced_messages_never_open_a_circuit(stack):
    send, runs = _paced_actor(stack, [0.01] * 10, circuit="channel:wa", circuit_requires_contact=True)
    send.send(1)
    stack.join()
    assert len(runs) == 11
    assert stack.breakers.states().get("channel:wa", CircuitState.CLOSED) is CircuitState.CLOSED


def test_a_paced_message_that_cannot_be_parked_is_retried_not_lost(stack, monkeypatch):
    import middleware.retries

    def broken_park(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(middleware.retries, "park", broken_park)
    send, runs = _paced_actor(stack, [0.01])
    send.send_with_options(args=(1,), max_retries=3)
    stack.join()
    assert runs == [1, 1]  # retried (a retry spent), then ran


@pytest.mark.parametrize(("scope", "counted"), [("recipient", False), ("sender", False), ("account", True)])
def test_only_account_level_rate_limits_count_against_a_circuit(scope, counted):
    assert is_dependency_failure(RateLimited("limited", scope=scope, retry_after=1)) is counted
    assert not is_dependency_failure(Paced("paced", wait_s=1))


# --- the service ---

class RecordingPacer:
    def __init__(self, waits=()):
        self.waits = list(waits)
        self.asked, self.held = [], []

    def acquire(self, channel, recipient, token):
        self.asked.append((channel, recipient, token))
        return self.waits.pop(0) if self.waits else 0.0

    def hold(self, channel, recipient, seconds):
        self.held.append((channel, recipient, seconds))


@pytest.fixture
def paced_world():
    rows, events = {}, []
    gateways = {WA: FakeChannelGateway("wa"), IG: FakeChannelGateway("ig")}
    pacer = RecordingPacer()
    service = MessagingService(lambda: FakeMessagingUnitOfWork(rows, events), gateways, lease_seconds=30,
                               pacer=pacer)
    return service, rows, gateways, pacer


def test_the_service_asks_the_pacer_before_each_attempt_and_a_wait_changes_nothing(paced_world):
    service, rows, gateways, pacer = paced_world
    message, _ = service.create(channel="whatsapp", recipient="+1555", text="hi")
    service.route(message.id)
    before = rows[message.id]
    pacer.waits = [2.5]
    with pytest.raises(Paced) as paced:
        service.deliver(message.id, WA)
    assert paced.value.wait_s == 2.5
    assert rows[message.id] == before  # no attempt counted, no lease taken
    assert rows[message.id].deliveries[0].attempts == 0 and rows[message.id].deliveries[0].sending_until is None
    assert gateways[WA].sent == []
    delivery = service.deliver(message.id, WA)
    assert (delivery.status, delivery.attempts) == (MessageStatus.SENT, 1)
    assert pacer.asked == [(WA, "+1555", f"{message.id}:whatsapp")] * 2
    service.deliver(message.id, WA)  # already sent: the pacer is not asked for a slot it would waste
    assert len(pacer.asked) == 2


@pytest.mark.parametrize(("scope", "held_for"), [("recipient", "+1555"), ("sender", None), ("account", None)])
def test_a_rate_limit_answer_holds_its_scope_for_every_worker(paced_world, scope, held_for):
    service, rows, gateways, pacer = paced_world
    message, _ = service.create(channel="whatsapp", recipient="+1555", text="hi")
    service.route(message.id)
    gateways[WA].fail_with = [RateLimited("whatsapp: 131056 ...", scope=scope, retry_after=6.0)]
    with pytest.raises(RateLimited):
        service.deliver(message.id, WA)
    assert pacer.held == [(WA, held_for, 6.0)]
    d = rows[message.id].deliveries[0]
    assert (d.status, d.attempts, d.sending_until) == (MessageStatus.PENDING, 1, None)
    assert d.last_error.startswith("RateLimited: whatsapp: 131056")


def test_a_paced_message_is_recorded_delayed_then_done_never_failed():
    """The job record (middleware/jobs.py) of a paced message: delayed until its wait is over, not
    failed nor retrying, then done, with one attempt: a paced wait spends none."""
    from tests.unit.test_jobs_middleware import Env, wait_for

    env = Env()
    try:
        waits = [1.0]

        @dramatiq.actor(broker=env.broker, queue_name="q", throws=(Paced,), max_retries=0)
        def send() -> None:
            if waits:
                raise Paced("over the rate", wait_s=waits.pop())

        env.start()
        message = send.send()
        view = wait_for(lambda: (v := env.show(message.message_id))["status"] == "delayed" and v)
        assert view["next_attempt_at"] and view["reason"] is None
        view = wait_for(lambda: (v := env.show(message.message_id))["status"] == "done" and v)
        assert view["attempts"] == 1 and env.letters.letters == {}
    finally:
        if env.worker is not None:
            env.worker.stop()
        env.broker.close()
