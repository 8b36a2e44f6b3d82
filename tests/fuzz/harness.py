"""The oracle of the fuzz suite, on atelier's real stack over the StubBroker.

A delivery is put on a queue as raw bytes (as any producer could), the worker runs it, and the
test watches what becomes of it and of every message it leads to:

- processed: the actor ran and returned, the message was acknowledged;
- skipped as a duplicate: Dedup skipped it (its skip counter rose) and it was acknowledged;
- dead-lettered: exactly one new letter, with a non-empty reason, in the dead-letter store.

Anything else is a violation, named: a retry or a park scheduled (a delayed re-enqueue), a message
rejected without a letter, one that failed and was acknowledged silently, one not settled within
DECIDE_S seconds, a worker or consumer thread that died.

An Observer middleware (test-only, appended to the stack) records what the worker does with each
delivery object; the dead-letter store and the dedup skip counter say why.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from middleware.dedup import DEDUP_SKIPS
from tests.fuzz.junk import Delivery

#: How long one delivery may take to be decided (the promise says "within seconds").
DECIDE_S = float(os.environ.get("FUZZ_DECIDE_S", "5"))
WORKER_THREADS = 4
#: Examples shown per distinct failure in the survey (FUZZ_SURVEY=1).
SURVEY_EXAMPLES = int(os.environ.get("FUZZ_SURVEY_EXAMPLES", "1"))


class Observer(Middleware):
    """Records, per delivery object, whether it ran (and how it ended), was skipped, acked or
    nacked, and every enqueue: a delayed one is a retry or a park."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.events: list[tuple[str, Any, Any]] = []
            self.settled = 0
            self.enqueued = 0  # without delay: each is one more delivery to wait for
            self.delayed: list[tuple[str, str, Any]] = []

    def after_enqueue(self, broker, message, delay) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.enqueued += 1
            self.events.append(("enqueue", message.message_id, message.actor_name))

    def delayed_enqueue(self, message, delay) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.delayed.append((str(message.message_id)[:80], str(message.actor_name)[:80], delay))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append(("ran", message, exception))

    def after_skip_message(self, broker, message) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append(("skipped", message, None))

    def after_ack(self, broker, message) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append(("ack", message, None))
            self.settled += 1

    def after_nack(self, broker, message) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append(("nack", message, None))
            self.settled += 1


@dataclass
class Verdict:
    delivery: Delivery
    outcomes: list[str] = field(default_factory=list)  # one per message it led to
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    letters: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self) -> str:
        return printable(self._explain())

    def _explain(self) -> str:
        lines = [f"{self.delivery!r}", f"  decided in {self.seconds:.2f}s; outcomes {self.outcomes}"]
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        lines += [f"  letter: reason={x.reason!r} actor={x.actor!r} error={x.error[:160]!r}" for x in self.letters]
        return "\n".join(lines)


class Tally:
    """Counts by outcome and reason over the run; printed at the end and in every failure."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: dict[str, list[str]] = {}  # signature -> explanations (survey mode)
        self.triggers: dict[str, Counter[str]] = {}  # signature -> mutation kinds seen with it

    def add(self, verdict: Verdict) -> None:
        self.counts["deliveries"] += 1
        self.counts.update(verdict.outcomes)
        self.counts.update(f"VIOLATION {re.split(r'[:;(]', v)[0].strip()}" for v in verdict.violations)
        for violation in verdict.violations:
            sig = signature(violation)
            self.failures.setdefault(sig, []).append(verdict.explain())
            self.triggers.setdefault(sig, Counter()).update(mutation_kinds(verdict.delivery.label))

    def survey(self) -> str:
        """Distinct failures: one example each, with how often the signature came up."""
        out = [f"{len(self.failures)} distinct failure signature(s):"]
        for sig, examples in sorted(self.failures.items(), key=lambda kv: -len(kv[1])):
            kinds = ", ".join(f"{k} x{n}" for k, n in self.triggers[sig].most_common(6))
            out += [f"--- x{len(examples)}  {sig}", f"  with: {kinds}", *examples[:SURVEY_EXAMPLES]]
        return printable("\n".join(out))

    def __str__(self) -> str:
        width = max((len(k) for k in self.counts), default=10)
        return printable("fuzz outcomes:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in sorted(self.counts.items())))


def printable(text: str) -> str:
    """Text a terminal can take: junk carries lone surrogates."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def signature(violation: str) -> str:
    """What a failure is, without its ids, names and numbers."""
    text = re.sub(r"fz-[0-9a-f-]+|[0-9a-f]{8}-[0-9a-f-]{27}", "ID", violation)
    text = re.sub(r"\w+\(\)", "f()", re.sub(r"'[^']*'", "'…'", text))
    return re.sub(r"\d+", "N", text)[:150]


def mutation_kinds(label: str) -> list[str]:
    return re.findall(r"(\w+)\(", label.split(": ", 1)[-1]) or [label.split(" (")[0]]


class World:
    """atelier's stack on a StubBroker with every declared actor, a worker, and the stores to read."""

    def __init__(self, broker: Any, container: Any) -> None:
        self.broker = broker
        self.container = container
        self.observer = Observer()
        broker.add_middleware(self.observer)
        # A delayed enqueue (a retry, a park) is recorded and goes no further: it is a violation
        # already, and if it came round later it would be charged to another delivery.
        enqueue = broker.enqueue

        def enqueue_now_only(message, *, delay=None):  # type: ignore[no-untyped-def]
            if delay is None:
                return enqueue(message)
            self.observer.delayed_enqueue(message, delay)
            return message

        broker.enqueue = enqueue_now_only
        self.tally = Tally()
        self.worker: dramatiq.Worker | None = None
        self.restarts = 0  # a thread died or a delivery was never settled
        self._seen_letters: set[str] = set()
        self.start_worker()

    # --- the worker ---
    def start_worker(self) -> None:
        self.worker = dramatiq.Worker(self.broker, worker_threads=WORKER_THREADS, worker_timeout=100)
        self.worker.start()
        self.threads = self._threads()

    def _threads(self) -> list[threading.Thread]:
        assert self.worker is not None
        return [*self.worker.workers, *self.worker.consumers.values()]

    def dead_threads(self) -> list[str]:
        return [t.name for t in self.threads if not t.is_alive()]

    def restart_worker(self) -> None:
        """After a violation that may leave state behind (a dead thread, a message stuck)."""
        assert self.worker is not None
        self.restarts += 1
        self.worker.stop(timeout=5000)
        self.broker.flush_all()
        # A stopped Worker leaves its middleware on the broker (it would add consumers to it).
        self.broker.middleware[:] = [m for m in self.broker.middleware if type(m).__name__ != "_WorkerMiddleware"]
        self.start_worker()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=5000)

    # --- what the stores say ---
    def dedup_skips(self) -> float:
        return sum(self.container.metrics_store.read(DEDUP_SKIPS).values())

    def new_letters(self) -> list[Any]:
        """Letters written since the last call, whatever their times say (a forged letter's may be old)."""
        from sqlalchemy import select

        from adapters.sql import tables as t

        with self.container.engine.connect() as conn:
            ids = set(conn.execute(select(t.dead_letters.c.id)).scalars()) - self._seen_letters
        self._seen_letters.update(ids)
        store = self.container.dead_letter_store
        return [store.get(i) for i in sorted(ids)]

    def _drops_expired(self, message: Any) -> bool:
        options = message.options if isinstance(message.options, dict) else {}
        actor = self.broker.actors.get(message.actor_name) if isinstance(message.actor_name, str) else None
        default = actor.options.get("dead_letter_expired", True) if actor is not None else True
        return options.get("dead_letter_expired", default) is False

    @staticmethod
    def _letter_id_of(message: Any) -> str:
        """The message id its letter would be stored under."""
        pending = message.options.get("dead_letter") if isinstance(message.options, dict) else None
        if isinstance(pending, dict) and "message_id" in pending:
            return str(pending["message_id"])
        return str(message.message_id)

    def _letter_exists(self, message_id: str) -> bool:
        from sqlalchemy import func, select

        from adapters.sql import tables as t

        try:
            with self.container.engine.connect() as conn:
                letters = t.dead_letters
                query = select(func.count()).select_from(letters).where(letters.c.message_id == message_id)
                return bool(conn.execute(query).scalar())
        except Exception:  # an id no letter could have been stored under (PostgreSQL refuses it)
            return False

    # --- one delivery ---
    def deliver(self, delivery: Delivery) -> Verdict:
        obs = self.observer
        obs.reset()
        skips_before = self.dedup_skips()
        started = time.monotonic()
        if delivery.queue not in self.broker.queues:
            self.broker.declare_queue(delivery.queue.removesuffix(".DQ"))
        self.broker.queues[delivery.queue].put(delivery.body)
        verdict = Verdict(delivery)
        decided = False
        while time.monotonic() - started < DECIDE_S:
            with obs.lock:
                # The delivery, plus every message enqueued since (fan-out, callbacks, a delayed
                # message moved to its queue), settled: nothing is left in flight.
                if obs.settled >= 1 + obs.enqueued:
                    decided = True
                    break
            if self.dead_threads():
                break
            time.sleep(0.002)
        verdict.seconds = time.monotonic() - started
        with obs.lock:
            events, delayed = list(obs.events), list(obs.delayed)
        if not decided:
            verdict.violations.append(
                f"not decided: {obs.settled} of {1 + obs.enqueued} deliveries settled after {verdict.seconds:.1f}s")
        self._classify(verdict, events, delayed, skips_before)
        dead = self.dead_threads()
        if dead:
            verdict.violations.append(f"thread died: {len(dead)} of the worker's threads are dead ({dead})")
        if not decided or dead:
            self.restart_worker()
        self.tally.add(verdict)
        return verdict

    def _classify(self, verdict: Verdict, events: list, delayed: list, skips_before: float) -> None:
        runs: dict[int, dict[str, Any]] = {}
        for kind, message, detail in events:
            if kind == "enqueue":
                continue
            state = runs.setdefault(id(message), {"message": message})
            state[kind] = detail if kind == "ran" else True
        letters = self.new_letters()
        verdict.letters = letters
        skipped = [s for s in runs.values() if "skipped" in s and ("ack" in s or "nack" in s)]
        nacked = [s for s in runs.values() if "nack" in s]
        duplicates = self.dedup_skips() - skips_before
        for s in runs.values():
            if "ack" in s and "ran" in s and s["ran"] is None:
                verdict.outcomes.append("processed")
            elif "ack" in s and "ran" in s:
                exc = s["ran"]
                what = "retried" if delayed else "failed and acknowledged with no letter and no retry"
                verdict.violations.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        # A skip is either a duplicate (counted by Dedup) or a carrier whose letter was written.
        carriers = len([s for s in skipped if "ack" in s]) - int(duplicates)
        verdict.outcomes += ["skipped as a duplicate"] * max(int(duplicates), 0)
        verdict.outcomes += [f"dead letter: {x.reason}" for x in letters]
        # An expired message of an actor (or message) that says dead_letter_expired=False is
        # dropped by design (periodic ticks: the next one replaces it): an outcome, not a loss.
        dropped = [s for s in nacked if "skipped" in s and self._drops_expired(s["message"])]
        verdict.outcomes += ["dropped as expired (dead_letter_expired=False)"] * len(dropped)
        expected_letters = len(nacked) - len(dropped) + carriers
        if len(letters) > expected_letters:
            verdict.violations.append(f"letters: {len(letters)} written for {expected_letters} failed deliveries")
        elif len(letters) < expected_letters:
            what = (f"rejected with no dead letter ({len(nacked)} rejected, {len(letters)} letters)" if nacked
                    else "skipped with no dead letter, and not as a duplicate")
            ids = [self._letter_id_of(s["message"]) for s in nacked + skipped]
            taken = [i for i in ids if self._letter_exists(i)]
            if taken:
                what += f"; a letter for message id {taken[0]!r:.40} was written before (same id, attempts)"
            elif any("dead_letter" in (s["message"].options or {}) for s in nacked + skipped):
                what += "; it carried a dead_letter option"
            verdict.violations.append(what)
        for x in letters:
            if not (isinstance(x.reason, str) and x.reason.strip()):
                verdict.violations.append(f"letter without a reason: {x!r:.200}")
        if delayed and not any(v.startswith("retried") for v in verdict.violations):
            verdict.violations.append(
                "retry or park scheduled (delayed re-enqueue): "
                + ", ".join(f"{actor} {mid} in {delay} ms" for mid, actor, delay in delayed[:3]))
        if not verdict.outcomes and not verdict.violations:
            verdict.violations.append("no outcome at all: settled, but neither processed, skipped nor dead-lettered")
