"""The dynamic batcher under real threads: one call for concurrent submitters, each gets its own
result, a failing call fails every item of its batch."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.batching import DynamicBatcher
from tests.services import wait_for


def test_concurrent_submissions_share_one_call_and_keep_their_results():
    calls: list[list[int]] = []

    def fn(items):
        calls.append(list(items))
        return [i * 10 for i in items]

    # A long max_wait: the batch closes when full, so the eight threads meet in one call.
    batcher = DynamicBatcher(fn, max_batch_size=8, max_wait=60)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: batcher.submit(i, timeout=60), range(8)))
    assert results == [i * 10 for i in range(8)]
    assert len(calls) == 1 and sorted(calls[0]) == list(range(8))
    assert batcher.batch_sizes == [8]


def test_batches_never_exceed_the_maximum():
    gate = threading.Event()

    def fn(items):
        gate.wait(30)  # the first call holds the model until everything is queued
        return [str(i) for i in items]

    batcher = DynamicBatcher(fn, max_batch_size=2, max_wait=0)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(5)]
        wait_for(lambda: batcher.batch_sizes and sum(batcher.batch_sizes) + batcher._queue.qsize() == 5,
                 timeout=30, message="all five submitted")
        gate.set()
        assert [f.result(60) for f in futures] == ["0", "1", "2", "3", "4"]
    assert sum(batcher.batch_sizes) == 5 and max(batcher.batch_sizes) <= 2


def test_a_failing_call_fails_every_item_of_its_batch_and_the_batcher_goes_on():
    fail = threading.Event()
    fail.set()

    def fn(items):
        if fail.is_set():
            raise RuntimeError("model exploded")
        return [-i for i in items]

    batcher = DynamicBatcher(fn, max_batch_size=4, max_wait=60)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(4)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(60)
    assert batcher.batch_sizes == [4]
    fail.clear()
    batcher.max_wait = 0
    assert batcher.submit(7, timeout=60) == -7


def test_wrong_number_of_results_is_an_error_for_everyone():
    batcher = DynamicBatcher(lambda items: [1], max_batch_size=3, max_wait=60)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, i, 60) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="returned 1 results for 3 items"):
                f.result(60)


def test_max_batch_size_is_at_least_one():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda items: items, max_batch_size=0)
