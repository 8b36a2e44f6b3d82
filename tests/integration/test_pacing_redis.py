"""The Redis pacer (adapters/state/pacing.py) on the local Redis: the same rules as in memory, on
Redis's clock, holding under concurrent callers, and unpaced (not failing) when Redis is gone."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from itertools import pairwise

import redis

from adapters.state.pacing import PaceRule, RedisPacer
from domain.models import MessageChannel
from tests import services

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


def gaps(by_key: dict[str, list[float]]) -> list[float]:
    """The time between consecutive events of each key."""
    return [b - a for times in by_key.values() for a, b in pairwise(sorted(times))]


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open interval [t, t + window)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def waited(wait: float, expected: float, spent: float) -> bool:
    """Whether ``wait`` is ``expected`` less at most the ``spent`` seconds since the call it counts
    from (Redis counts in ms)."""
    return expected - spent - 0.002 <= wait <= expected + 0.002


def test_rates_promises_and_holds_on_redis(redis_ns):
    client, ns = redis_ns
    pacer = RedisPacer(client, ns, {WA: PaceRule("n1", 2, 30.0)}, margin_ms=100)
    start = time.monotonic()
    assert pacer.acquire(WA, "a", "m1") == 0.0 and pacer.acquire(WA, "b", "m2") == 0.0
    first = time.monotonic()
    waits = [pacer.acquire(WA, "c", "m3"), pacer.acquire(WA, "d", "m4")]
    # A wait is counted on Redis's clock at its own call: the time the test spent since the call
    # it follows from comes off it (a loaded machine can spend tens of ms between two calls).
    assert waited(waits[0], 1.1, time.monotonic() - start)
    assert waited(waits[1], waits[0] + 0.55, time.monotonic() - first)
    assert pacer.acquire(WA, "c", "m3") <= waits[0]  # asking again keeps its place
    assert waited(pacer.acquire(WA, "a", "m5"), 30.1, time.monotonic() - start)  # the pair: nothing of the rate
    time.sleep(waits[0])
    assert pacer.acquire(WA, "e", "newcomer") > 0.4  # behind m4, though the window has room
    assert pacer.acquire(WA, "c", "m3") == 0.0
    held = time.monotonic()
    pacer.hold(WA, "z", 5)
    assert waited(pacer.acquire(WA, "z", "m6"), 5, time.monotonic() - held)
    assert pacer.acquire(IG, "x", "m7") == 0.0  # no rule for instagram
    assert {k.decode().removeprefix(ns) for k in client.scan_iter(f"{ns}*")} >= {
        "whatsapp:n1:log", "whatsapp:n1:next", "whatsapp:n1:promised", "whatsapp:n1:to:a:log",
        "whatsapp:n1:to:a:promised", "whatsapp:n1:to:z:hold"}
    assert all(0 < client.pttl(k) <= 71_000 for k in client.scan_iter(f"{ns}*"))  # every key expires


def test_concurrent_callers_never_go_over_the_rates(redis_ns):
    """Eight threads with two pacers (two workers' worth) ask for slots for 2.5 s: the granted
    sends are never more than 20 in any second, nor closer than 0.5 s to one recipient."""
    client, ns = redis_ns
    rules = {WA: PaceRule("n1", 20, 0.5)}
    # The grants are timed here, after each call returns, by threads sharing the GIL: the margin
    # (the default's) covers how late one of them can be next to another.
    pacers = [RedisPacer(redis.Redis.from_url(services.REDIS_URL), ns, rules, margin_ms=100) for _ in range(2)]
    granted: list[tuple[float, str]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 2.5

    def worker(n: int) -> None:
        """A worker thread's deliveries: each asks until it is let through, sleeping its wait."""
        pacer = pacers[n % 2]
        i = 0
        while time.monotonic() < deadline:
            recipient, token = f"r{(n * 7 + i) % 12}", f"{n}-{i}"
            i += 1
            while time.monotonic() < deadline:
                wait = pacer.acquire(WA, recipient, token)
                if wait == 0.0:
                    with lock:
                        granted.append((time.time(), recipient))
                    break
                time.sleep(min(wait, 0.2))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in pacers:
        p.client.close()
    assert len(granted) >= 30  # it did let sends through: 20 per 1.1 s for 2.5 s, about 45
    assert max_in_window([t for t, _ in granted], 1.0) <= 20
    by_recipient = defaultdict(list)
    for t, r in granted:
        by_recipient[r].append(t)
    between = gaps(by_recipient)
    assert between and min(between) >= 0.5


def test_without_redis_sends_go_unpaced():
    dead = redis.Redis(port=services.free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    pacer = RedisPacer(dead, "atelier:x:", {WA: PaceRule("n1", 1, 6.0)})
    assert [pacer.acquire(WA, "a", f"m{i}") for i in range(3)] == [0.0, 0.0, 0.0]
    pacer.hold(WA, "a", 5)  # logged, not raised
