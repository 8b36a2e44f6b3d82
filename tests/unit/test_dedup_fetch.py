"""Dedup's keys taken per fetched batch (after_fetch), driven hook by hook on the StubBroker with
the in-memory store."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from adapters.state.memory import InMemoryDedupStore
from brokers.dispatch import AtelierStubBroker
from domain.resilience import DedupOutcome
from middleware.dedup import Dedup


class CountingStore(InMemoryDedupStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.down = False

    def acquire(self, key: str, token: str, lease_ms: int) -> DedupOutcome:
        self.calls.append(("acquire", 1))
        return super().acquire(key, token, lease_ms)

    def take_free(self, items: Any) -> list[DedupOutcome]:
        self.calls.append(("take_free", len(items)))
        if self.down:
            raise ConnectionError("store down")
        return super().take_free(items)


@pytest.fixture
def setup():
    store = CountingStore()
    dedup = Dedup(lambda: store)
    broker = AtelierStubBroker(middleware=[dedup])

    @dramatiq.actor(broker=broker, queue_name="q", dedup_key=lambda i: f"k{i}", dedup_window=60)
    def job(i: int) -> None:
        pass

    def fetched(*args: int, **options: Any) -> list[MessageProxy]:
        return [MessageProxy(job.message_with_options(args=(i,), **options)) for i in args]

    yield broker, dedup, store, fetched
    broker.close()


def test_a_batch_takes_its_free_keys_in_one_call_and_each_start_uses_its_lease(setup) -> None:
    broker, dedup, store, fetched = setup
    batch = fetched(1, 2, 3)
    broker.emit_after("fetch", batch)
    assert store.calls == [("take_free", 3)]
    for message in batch:
        broker.emit_before("process_message", message)
        broker.emit_after("process_message", message, result=None)
    assert store.calls == [("take_free", 3)]  # no acquire per message
    assert [store.acquire(f"job:k{i}", "other|x.1", 1000) for i in (1, 2, 3)] == [DedupOutcome.DONE] * 3


def test_a_duplicate_in_the_same_batch_is_skipped_at_start(setup) -> None:
    broker, dedup, store, fetched = setup
    first, second = fetched(7, 7)
    broker.emit_after("fetch", [first, second])
    broker.emit_before("process_message", first)  # took the key at fetch
    with pytest.raises(SkipMessage):
        broker.emit_before("process_message", second)  # not taken early: decided now (busy)
    assert store.calls == [("take_free", 2), ("acquire", 1)]


def test_delayed_and_unknown_messages_take_no_key_at_fetch(setup) -> None:
    broker, dedup, store, fetched = setup
    delayed = fetched(1, eta=int(time.time() * 1000) + 60_000)
    unknown = [MessageProxy(Message(queue_name="q", actor_name="gone", args=(), kwargs={},
                                    options={"dedup_key": "x"}))]
    broker.emit_after("fetch", delayed + unknown)
    assert store.calls == []
    assert store.acquire("job:k1", "other|x.1", 1000) is DedupOutcome.ACQUIRED  # the key stayed free


def test_a_done_key_is_decided_at_start(setup) -> None:
    broker, dedup, store, fetched = setup
    store.complete("job:k5", "earlier", 60_000)
    (message,) = fetched(5)
    broker.emit_after("fetch", [message])
    with pytest.raises(SkipMessage):
        broker.emit_before("process_message", message)
    assert store.calls == [("take_free", 1), ("acquire", 1)]


def test_a_lease_not_confirmed_for_half_its_ttl_is_taken_again_at_start(setup) -> None:
    broker, dedup, store, fetched = setup
    (message,) = fetched(4)
    broker.emit_after("fetch", [message])
    dedup._leases[message._dedup_lease].confirmed -= dedup.lease_ttl / 2  # not renewed since
    broker.emit_before("process_message", message)  # its own lease: acquired again, not skipped
    assert store.calls == [("take_free", 1), ("acquire", 1)]
    broker.emit_after("process_message", message, result=None)
    assert store.acquire("job:k4", "other|x.1", 1000) is DedupOutcome.DONE


def test_a_lease_dropped_while_its_message_waited_is_taken_again_at_start(setup) -> None:
    broker, dedup, store, fetched = setup
    (message,) = fetched(4)
    broker.emit_after("fetch", [message])
    dedup._leases.clear()  # waited longer than FETCHED_WAIT_MAX_S, or the worker is stopping
    broker.emit_before("process_message", message)
    assert store.calls == [("take_free", 1), ("acquire", 1)]
    assert store.acquire("job:k4", "other|x.1", 1000) is DedupOutcome.BUSY  # held for this run


def test_a_message_skipped_before_it_started_frees_the_key_it_took_at_fetch(setup) -> None:
    broker, dedup, store, fetched = setup
    (message,) = fetched(9)
    broker.emit_after("fetch", [message])
    assert store.acquire("job:k9", "other|x.1", 1000) is DedupOutcome.BUSY
    broker.emit_after("skip_message", message)  # e.g. AgeLimit: expired before Dedup's hook
    assert store.acquire("job:k9", "other|x.1", 1000) is DedupOutcome.ACQUIRED
    assert not dedup._leases  # and no longer renewed


def test_a_store_down_at_fetch_leaves_the_decision_to_the_start_for_a_while(setup) -> None:
    broker, dedup, store, fetched = setup
    store.down = True
    first, second = fetched(3, 4)
    broker.emit_after("fetch", [first])  # raises nothing
    store.down = False
    broker.emit_after("fetch", [second])  # not tried again at once: the consumer thread does not wait
    broker.emit_before("process_message", first)
    assert store.calls == [("take_free", 1), ("acquire", 1)]
    dedup._fetch_paused_until = 0.0  # the pause is over
    broker.emit_after("fetch", [second])
    assert store.calls[-1] == ("take_free", 1)


def test_an_earlier_delivery_s_lease_is_not_taken_at_fetch(setup) -> None:
    broker, dedup, store, fetched = setup
    (message,) = fetched(2)
    InMemoryDedupStore.acquire(store, "job:k2", f"{message.message_id}|elsewhere.1", 60_000)  # it runs there
    broker.emit_after("fetch", [message])
    assert "_dedup_lease" not in message.__dict__
    broker.emit_after("skip_message", message)  # skipped before it started: must not free the key
    assert store.acquire("job:k2", "other|x.1", 1000) is DedupOutcome.BUSY


def test_carriers_and_messages_with_a_max_age_take_no_key_at_fetch(setup) -> None:
    broker, dedup, store, fetched = setup
    batch = fetched(1, dead_letter={"reason": "x"}) + fetched(2, max_age=60_000)
    broker.emit_after("fetch", batch)
    assert store.calls == []
