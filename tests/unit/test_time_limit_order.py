"""TimeLimit sits last in atelier's stack: its alarm covers the actor, not the middleware's
after-hooks (where a dead letter or a dedup completion is written)."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.middleware import Middleware, TimeLimit

import middleware
from brokers.dispatch import AtelierStubBroker
from tests.services import drain_stub


class SlowAfterHook(Middleware):
    """An after-hook that takes 300 ms of running Python (where an async exception can land)."""

    def __init__(self) -> None:
        self.finished = 0

    def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        self.finished += 1


def test_an_actor_that_ends_just_under_its_limit_does_not_interrupt_the_after_hooks() -> None:
    stack = middleware.build_stack(max_retries=0)
    tl = next(m for m in stack if isinstance(m, TimeLimit))
    assert stack[-1] is tl
    tl.manager.interval = 0.005  # check deadlines every 5 ms instead of every second
    slow = SlowAfterHook()
    # Where DeadLetters sits: its after-hook runs after the actor and before Retries'.
    stack.insert(next(i for i, m in enumerate(stack) if type(m).__name__ == "ClassifiedRetries"), slow)
    broker = AtelierStubBroker(middleware=stack)
    broker.emit_after("process_boot")  # starts the time limit's monitor thread
    ran = []

    @dramatiq.actor(broker=broker, queue_name="q", time_limit=200)
    def quick() -> None:
        time.sleep(0.06)  # 60 of its 200 ms (room for a late wake-up); the after-hooks run past the deadline
        ran.append(1)

    quick.send()
    drain_stub(broker)
    assert ran == [1]
    assert slow.finished == 1
