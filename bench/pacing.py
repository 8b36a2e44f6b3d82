"""Pacing against Dramatiq's own rate limiters, on the local Redis, in the same run: two processes
of four threads each ask for send slots as fast as they are let, for a few seconds, and every
grant's time is recorded. For each limiter: grants, the most grants in any sliding second (the
send rate's limit is RATE), and for a pair rate of one message per PAIR seconds to one recipient
the closest two grants; and how many times the threads asked per grant (each ask is one Lua
script for the pacer, a WATCH/MULTI transaction of several round trips for Dramatiq's).

    .venv/bin/python bench/pacing.py [seconds]    (from the checkout root; Redis on 127.0.0.1:6379)

Dramatiq's BucketRateLimiter(limit, bucket=1000) and WindowRateLimiter(limit, window) answer yes
or no: a refused thread sleeps 5 ms and asks again. The pacer (adapters/state/pacing.py, margin
0 to compare the rules themselves, then its default 100 ms) answers a wait, which the thread
sleeps. Times are taken after the grant returns, as a send would go out. Each limiter's
keys are its own and deleted afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
import uuid
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from dramatiq.rate_limits import BucketRateLimiter, WindowRateLimiter  # noqa: E402
from dramatiq.rate_limits.backends import RedisBackend  # noqa: E402

from adapters.state.pacing import PaceRule, RedisPacer  # noqa: E402
from domain.models import MessageChannel  # noqa: E402

RATE, PAIR = 20, 6
PROCESSES, THREADS = 2, 4
LIMITERS = (("bucket", "BucketRateLimiter"), ("window", "WindowRateLimiter"), ("pacer:0", "atelier pacer, margin 0"),
            ("pacer:100", "atelier pacer, margin 100 ms"))


def _grants(kind: str, ns: str, seconds: float, start: float, pair: bool, out: mp.Queue) -> None:
    kind, _, margin = kind.partition(":")
    client = redis.Redis()
    backend = RedisBackend(client=client)
    if kind == "bucket":
        limiter = BucketRateLimiter(backend, f"{ns}k", limit=1 if pair else RATE, bucket=PAIR * 1000 if pair else 1000)
    elif kind == "window":
        limiter = WindowRateLimiter(backend, f"{ns}k", limit=1 if pair else RATE, window=PAIR if pair else 1)
    else:
        rule = PaceRule("n", 0 if pair else RATE, PAIR if pair else 0)
        pacer = RedisPacer(client, ns, {MessageChannel.WHATSAPP: rule}, margin_ms=int(margin or 0))
    times: list[float] = []
    asks = [0]
    lock = threading.Lock()

    def run() -> None:
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < start + seconds:
            if kind == "pacer":  # a delivery asks until it is let through, sleeping its wait
                token = uuid.uuid4().hex
                while time.time() < start + seconds:
                    wait = pacer.acquire(MessageChannel.WHATSAPP, "one", token)
                    asks[0] += 1
                    if wait == 0.0:
                        with lock:
                            times.append(time.time())
                        break
                    time.sleep(min(wait, 0.5))
            else:
                with limiter.acquire(raise_on_failure=False) as granted:
                    asks[0] += 1
                    if granted:
                        with lock:
                            times.append(time.time())
                    else:
                        time.sleep(0.005)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((times, asks[0]))


def measure(kind: str, seconds: float, pair: bool) -> tuple[list[float], int]:
    """(grant times, asks) of all threads."""
    ns = f"bench:pacing:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis()
    out: mp.Queue = mp.Queue()
    start = time.time() + 1.0
    procs = [mp.Process(target=_grants, args=(kind, ns, seconds, start, pair, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    times = sorted(t for got, _ in results for t in got)
    keys = list(client.scan_iter(f"{ns}*"))
    if keys:
        client.delete(*keys)
    return times, sum(n for _, n in results)


def max_in_window(times: list[float], window: float) -> int:
    best, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    print(f"send rate {RATE}/s, {PROCESSES} processes x {THREADS} threads, {seconds:g} s")
    print(f"{'limiter':<30}{'grants':>8}{'max in any 1 s':>16}{'asks/grant':>12}")
    for kind, name in LIMITERS:
        times, asks = measure(kind, seconds, pair=False)
        print(f"{name:<30}{len(times):>8}{max_in_window(times, 1.0):>16}{asks / max(1, len(times)):>12.1f}")
    pair_seconds = max(seconds, 3 * PAIR + 1)
    print(f"\npair rate 1 per {PAIR} s to one recipient, {pair_seconds:g} s")
    print(f"{'limiter':<30}{'grants':>8}{'closest two (s)':>16}")
    for kind, name in LIMITERS:
        times, _ = measure(kind, pair_seconds, pair=True)
        closest = min((b - a for a, b in pairwise(times)), default=float("nan"))
        print(f"{name:<30}{len(times):>8}{closest:>16.3f}")


if __name__ == "__main__":
    main()
