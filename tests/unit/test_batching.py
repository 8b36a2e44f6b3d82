"""The dynamic batcher under real threads: one call for concurrent submitters, each gets its own
result, a failing call fails every item of its batch."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.batching import DynamicBatcher
from tests.services import wait_for


def _gated(results_of):  # type: ignore[no-untyped-def]
    """A batch function whose first call waits for ``gate``: the others queue up meanwhile."""
    gate = threading.Event()
    calls: list[list[int]] = []

    def fn(items):
        if not calls:
            gate.wait(30)
        calls.append(list(items))
        return results_of(items)

    return fn, gate, calls


def test_concurrent_submissions_share_one_call_and_keep_their_results():
    fn, gate, calls = _gated(lambda items: [i * 10 for i in items])
    batcher = DynamicBatcher(fn, max_batch_size=8, max_wait=0.2)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(8)]
        wait_for(lambda: batcher.batch_sizes and sum(batcher.batch_sizes) + batcher._queue.qsize() == 8,
                 timeout=30, message="all eight submitted")
        gate.set()
        assert [f.result(60) for f in futures] == [i * 10 for i in range(8)]
    # The first call took what had arrived; everything that queued meanwhile went in one call.
    assert len(calls) == 2 and sorted(calls[0] + calls[1]) == list(range(8))


def test_a_batch_waits_for_each_thread_that_submitted_recently():
    batcher = DynamicBatcher(lambda items: list(items), max_batch_size=16, max_wait=60)
    with ThreadPoolExecutor(6) as pool:
        # Six threads were busy a moment ago (as in the last batch): the next batch expects six.
        barrier = threading.Barrier(6)

        def busy(_):  # type: ignore[no-untyped-def]
            barrier.wait(30)  # six distinct threads
            batcher._seen[threading.get_ident()] = time.monotonic()

        list(pool.map(busy, range(6)))
        assert batcher.expected(time.monotonic()) == 6
        first = pool.submit(batcher.submit, 0, 60)
        wait_for(lambda: batcher._queue.qsize() == 0, timeout=30, message="the first item taken")
        rest = [pool.submit(batcher.submit, i, 60) for i in range(1, 6)]
        assert [f.result(60) for f in [first, *rest]] == list(range(6))
    assert batcher.batch_sizes == [6]  # not [1, 5]: the first waited for the others
    # Threads that stop submitting drop out of the expectation.
    assert batcher.expected(time.monotonic() + 3600) == 1


def test_a_lone_item_does_not_wait_for_company():
    batcher = DynamicBatcher(lambda items: [i + 1 for i in items], max_batch_size=16, max_wait=3600)
    # Would block for an hour if the batcher waited max_wait for more; the timeout fails it first.
    assert batcher.submit(1, timeout=30) == 2
    assert batcher.submit(2, timeout=30) == 3


def test_a_batch_waits_for_a_place_reserved_while_its_item_is_prepared():
    # No thread has been seen yet (a worker starting): the reservation is what makes the first
    # item wait. Without it the batches would be [1, 1].
    batcher = DynamicBatcher(lambda items: list(items), max_batch_size=16, max_wait=3600)
    reserved, ready = threading.Event(), threading.Event()

    def prepared_late():  # type: ignore[no-untyped-def]
        with batcher.reserve() as submit:
            reserved.set()
            ready.wait(30)  # decoding, preprocessing...
            return submit("late", 60)

    with ThreadPoolExecutor(2) as pool:
        late = pool.submit(prepared_late)
        assert reserved.wait(30)
        first = pool.submit(batcher.submit, "first", 60)
        wait_for(lambda: len(batcher._seen) == 1 and batcher._queue.qsize() == 0, timeout=30,
                 message="the first item taken, its batch forming")
        ready.set()
        assert first.result(60) == "first" and late.result(60) == "late"
    assert batcher.batch_sizes == [2]


def test_a_place_freed_without_an_item_stops_the_wait():
    batcher = DynamicBatcher(lambda items: [i * 2 for i in items], max_batch_size=16, max_wait=3600)
    reserved, fail = threading.Event(), threading.Event()

    def undecodable():  # type: ignore[no-untyped-def]
        with batcher.reserve():
            reserved.set()
            fail.wait(30)
            raise ValueError("not an image")

    with ThreadPoolExecutor(2) as pool:
        broken = pool.submit(undecodable)
        assert reserved.wait(30)
        first = pool.submit(batcher.submit, 21, 60)
        wait_for(lambda: len(batcher._seen) == 1 and batcher._queue.qsize() == 0, timeout=30,
                 message="the first item taken, its batch waiting for the reserved place")
        fail.set()
        # Would wait max_wait (an hour) if the freed place were still awaited; the timeout fails it first.
        assert first.result(60) == 42
        with pytest.raises(ValueError):
            broken.result(60)
    assert batcher.batch_sizes == [1]
    assert batcher._reserved == 0


def test_a_reserved_place_takes_one_item():
    batcher = DynamicBatcher(lambda items: list(items), max_batch_size=4, max_wait=0)
    with batcher.reserve() as submit:
        assert submit("a", 30) == "a"
        with pytest.raises(RuntimeError, match="one item"):
            submit("b", 30)
    assert batcher._reserved == 0


def test_batches_never_exceed_the_maximum():
    fn, gate, calls = _gated(lambda items: [str(i) for i in items])
    batcher = DynamicBatcher(fn, max_batch_size=2, max_wait=0)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(5)]
        wait_for(lambda: batcher.batch_sizes and sum(batcher.batch_sizes) + batcher._queue.qsize() == 5,
                 timeout=30, message="all five submitted")
        gate.set()
        assert [f.result(60) for f in futures] == ["0", "1", "2", "3", "4"]
    assert sum(batcher.batch_sizes) == 5 and max(batcher.batch_sizes) <= 2


def test_a_failing_call_fails_every_item_of_its_batch_and_the_batcher_goes_on():
    failing = threading.Event()
    failing.set()

    def fail_or_negate(items):
        if failing.is_set():
            raise RuntimeError("model exploded")
        return [-i for i in items]

    fn, gate, calls = _gated(fail_or_negate)
    batcher = DynamicBatcher(fn, max_batch_size=8, max_wait=0.2)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(4)]
        wait_for(lambda: batcher.batch_sizes and sum(batcher.batch_sizes) + batcher._queue.qsize() == 4,
                 timeout=30, message="all four submitted")
        gate.set()
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(60)
    assert sum(batcher.batch_sizes) == 4
    failing.clear()
    assert batcher.submit(7, timeout=60) == -7


def test_wrong_number_of_results_is_an_error_for_everyone():
    fn, gate, calls = _gated(lambda items: [1])
    batcher = DynamicBatcher(fn, max_batch_size=8, max_wait=0.2)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(4)]
        wait_for(lambda: batcher.batch_sizes and sum(batcher.batch_sizes) + batcher._queue.qsize() == 4,
                 timeout=30, message="all four submitted")
        gate.set()
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(60))
            except RuntimeError as exc:
                outcomes.append(str(exc))
    # A batch of one gets its one result; the larger batch fails every one of its items.
    assert sorted(batcher.batch_sizes) != [1, 1, 1, 1]
    for size in set(batcher.batch_sizes) - {1}:
        failed = outcomes.count(f"batch function returned 1 results for {size} items")
        assert failed == size * batcher.batch_sizes.count(size)
    assert outcomes.count(1) == batcher.batch_sizes.count(1)


def test_max_batch_size_is_at_least_one():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda items: items, max_batch_size=0)
