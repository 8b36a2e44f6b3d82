"""What the middleware hooks cost per message, without any broker I/O: the four signals a worker
emits per message (before/after process_message, before/after ack) on the StubBroker, in one
thread, timed in thread CPU. Bare Dramatiq (its broker class and default middleware) against the
atelier stack on atelier's broker class (table dispatch), no dedup key and no circuit, in the same
run; best of several rounds.

    .venv/bin/python bench/hook_cost.py [messages] [rounds]    (from the checkout root)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq  # noqa: E402
from dramatiq.broker import MessageProxy  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit  # noqa: E402

import middleware  # noqa: E402
from adapters.metrics import InMemoryMetricsStore  # noqa: E402
from adapters.sql.deadletters import SqlDeadLetterStore  # noqa: E402
from adapters.sql.engine import make_engine  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.state.memory import InMemoryBreakerStore, InMemoryDedupStore, InMemoryFallbackQueue  # noqa: E402
from brokers.dispatch import AtelierStubBroker  # noqa: E402


def build(stack: str, db_url: str) -> StubBroker:
    if stack == "bare":
        return StubBroker(middleware=[AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(),
                                      Retries()])
    metrics, dedup, breakers, fallback = (InMemoryMetricsStore(), InMemoryDedupStore(), InMemoryBreakerStore(),
                                          InMemoryFallbackQueue())
    letters = SqlDeadLetterStore(make_engine(db_url))
    return AtelierStubBroker(middleware=middleware.build_stack(
        max_retries=0, metrics_store=lambda: metrics, dedup_store=lambda: dedup, breaker_store=lambda: breakers,
        fallback_queue=lambda: fallback, dead_letter_store=lambda: letters))


def per_message_us(stack: str, n: int, db_url: str) -> float:
    broker = build(stack, db_url)
    broker.emit_after("process_boot")

    def noop(i: int) -> None:
        pass

    actor = dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name="q")
    messages = []
    for i in range(n):
        message = actor.message(i)
        broker.emit_before("enqueue", message, None)  # stamps what enqueueing stamps (correlation ids)
        messages.append(MessageProxy(message))
    started = time.thread_time()
    for message in messages:
        broker.emit_before("process_message", message)
        actor.fn(*message.args)
        broker.emit_after("process_message", message, result=None)
        broker.emit_before("ack", message)
        broker.emit_after("ack", message)
    return (time.thread_time() - started) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        upgrade(db_url)
        best = {"bare": float("inf"), "stack": float("inf")}
        for _ in range(rounds):
            for stack in best:
                best[stack] = min(best[stack], per_message_us(stack, n, db_url))
    print(f"hooks per message, {n} messages, best of {rounds} rounds, thread CPU")
    print(f"bare Dramatiq:  {best['bare']:6.1f} us")
    print(f"atelier stack:  {best['stack']:6.1f} us  (+{best['stack'] - best['bare']:.1f} us, "
          f"{best['stack'] / best['bare']:.2f}x bare)")


if __name__ == "__main__":
    main()
