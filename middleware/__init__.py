"""atelier's Dramatiq middleware, one class per module.

The stack, in list order. Dramatiq calls before_* hooks in list order and after_* hooks
(after_process_message, after_skip_message, ...) in REVERSE order, and a SkipMessage raised in a
before_process_message hook stops the hooks after it (but every after_skip_message runs).

1. AgeLimit, ShutdownNotifications, Callbacks, Pipelines, CurrentMessage: Dramatiq's own;
   CurrentMessage lets actors and middleware see the running message. (TimeLimit comes last: 9.)
2. Metrics: counts and times every message in the shared MetricsStore (when given one). Early,
   so its timer spans the other hooks and its after-hooks see every outcome, skips included.
3. LogContext: sets the message's log context (actor/message_id/queue/retries and its
   correlation_id/causation_id: one ContextVar, merged into every log line by a structlog
   processor) before anything below logs; its after-hooks run late (reverse order), so what the
   middleware below log still carries them, and then clear it with what the actor bound.
4. Correlation: stamps correlation_id/causation_id at first enqueue (before_enqueue: the order of
   enqueue hooks does not matter, no other middleware reads them there) and notes the running
   message for the causation id of what it sends. After LogContext, whose before-hook clears the
   context (Correlation binds a fresh id for a message that carries none).
4a. Tracing (only while tracing is on: bootstrap/tracing.py): the consumer span of each run and the
   trace context of what is sent. Its before-hook comes before every hook that can log, skip,
   park or re-enqueue the message (so their lines carry the trace id, and a park or a retry is
   seen as this run's), and its after-hooks run after Jobs', DeadLetters' and Retries' (reverse
   order): the span ends with the outcome they decided (failed, retried, cancelled), and a retry's
   re-enqueue still happens inside the run's span. After Correlation, whose ids it records.
4b. Jobs: a record per message (status, attempts, times, progress) and cancellation. Before
   DeadLetters and Retries, so its after-hooks run after theirs: it records the outcome they
   decided (failed for good with the letter's id, or re-enqueued for a retry). Its before-hook
   skips a cancelled message before Dedup takes a key or CircuitBreaker a half-open trial. A
   running job cancelled raises domain.errors.Cancelled at its next progress point, which
   ClassifiedRetries neither retries nor fails (so no dead letter) and Jobs records as cancelled.
5. DeadLetters: before Retries in the list, so its after_process_message runs AFTER Retries':
   it sees message.failed as Retries decided it (permanent, retries exhausted, or a retry that
   could not be enqueued: issue 545) and stores the final failure, never an attempt that will be
   retried. Its before-hook comes before Dedup and CircuitBreaker: a message that only carries a
   dead letter to write must not take a dedup key nor a half-open trial.
6. ClassifiedRetries: Retries with PermanentError never retried; a failed re-enqueue fails the
   message instead of losing it.
7. Dedup: after Retries in the list, so its after-hook runs BEFORE Retries': a failure releases
   the key before Retries re-enqueues the message, so the retry can take it. Before
   CircuitBreaker in the list: a duplicate is skipped without consuming a half-open trial or
   being parked, and when the breaker parks a message (SkipMessage), Dedup's after_skip_message
   releases the key it took, since the message did not run.
8. CircuitBreaker: the last that decides, just before the actor runs (nothing after it can skip the
   message and strand a half-open trial), and its after-hook runs first but one: it counts the raw
   exception against the circuit before anything else reacts. It counts only dependency failures
   (TransientError, timeouts, connection errors), never PermanentError.
9. TimeLimit: Dramatiq's, last, so its alarm spans the actor alone: armed after every before-hook,
   disarmed before any after-hook. Placed early (Dramatiq's default puts it third), an actor that finishes just
   under its limit could be interrupted inside our after-hooks (a dead letter or a dedup completion
   cut off half-way); the hooks' own I/O has its own timeouts.
10. RequeueUnfinished (Redis broker only, appended by bootstrap/broker.py): after_worker_shutdown.

Brokers built by bootstrap/broker.py (brokers/dispatch.py) call each hook only on the middleware
that implement it, in this same order. Their consumers (brokers/consumers.py) also emit "fetch"
on the consumer thread with each fetched batch, before any of it runs (after_fetch(broker,
messages)): Dedup takes the batch's free keys there, in one round trip.

Dedup, CircuitBreaker, DeadLetters and Jobs take their state ports as callables resolved on first use
(build_stack connects to nothing); without them those middleware are left out of the stack.
Tracing is imported only when asked for: with tracing off, nothing of OpenTelemetry is loaded.
"""

from collections.abc import Callable
from typing import Any

from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from domain.ports import (
    BreakerStore,
    DeadLetterStore,
    DedupStore,
    FallbackQueue,
    JobStore,
    LetterFallback,
    MetricsStore,
)
from domain.resilience import BreakerPolicy
from middleware.circuit import CircuitBreaker
from middleware.correlation import Correlation
from middleware.deadletters import DeadLetters
from middleware.dedup import DEFAULT_LEASE_TTL_S, Dedup
from middleware.jobs import Jobs
from middleware.logcontext import LogContext
from middleware.metrics import Metrics
from middleware.retries import ClassifiedRetries
from runtime import correlation_scope, current_correlation_id, message_context


def build_stack(*, max_retries: int = 20, min_backoff_ms: int = 1000,
                max_backoff_ms: int = 300_000,
                metrics_store: Callable[[], MetricsStore] | None = None,
                dedup_store: Callable[[], DedupStore] | None = None,
                dedup_default_window: float = 86_400,
                dedup_lease_ttl: float = DEFAULT_LEASE_TTL_S,
                breaker_store: Callable[[], BreakerStore] | None = None,
                fallback_queue: Callable[[], FallbackQueue] | None = None,
                breaker_policy: BreakerPolicy | None = None,
                dead_letter_store: Callable[[], DeadLetterStore] | None = None,
                letter_fallback: Callable[[], LetterFallback] | None = None,
                job_store: Callable[[], JobStore] | None = None, jobs_flush_interval: float = 0.2,
                jobs_heartbeat: float = 5.0, tracing: bool = False, tracer_provider: Any = None,
                messaging_system: str = "dramatiq") -> list[Middleware]:
    """The middleware list every broker in atelier is built with (order: see the module docstring).
    ``tracing``: include Tracing, its spans going to ``tracer_provider`` (None: OpenTelemetry's
    global provider) with ``messaging_system`` as their messaging.system."""
    stack: list[Middleware] = [
        AgeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        *([Metrics(metrics_store)] if metrics_store is not None else []),
        LogContext(),
        Correlation(),
    ]
    if tracing:
        from middleware.tracing import Tracing

        stack.append(Tracing(tracer_provider=tracer_provider, messaging_system=messaging_system))
    if job_store is not None:
        stack.append(Jobs(job_store, flush_interval=jobs_flush_interval, heartbeat_interval=jobs_heartbeat,
                          dedup=dedup_store is not None,
                          circuit=breaker_store is not None and fallback_queue is not None))
    if dead_letter_store is not None:
        stack.append(DeadLetters(dead_letter_store, metrics=metrics_store, fallback=letter_fallback))
    stack.append(ClassifiedRetries(max_retries=max_retries, min_backoff=min_backoff_ms, max_backoff=max_backoff_ms,
                                   retry_claims=dedup_store))
    if dedup_store is not None:
        stack.append(Dedup(dedup_store, default_window=dedup_default_window, metrics=metrics_store,
                           lease_ttl=dedup_lease_ttl))
    if breaker_store is not None and fallback_queue is not None:
        stack.append(CircuitBreaker(breaker_store, fallback_queue, policy=breaker_policy, metrics=metrics_store))
    stack.append(TimeLimit())
    return stack


__all__ = ["CircuitBreaker", "ClassifiedRetries", "Correlation", "DeadLetters", "Dedup", "Jobs", "LogContext",
           "Metrics", "build_stack", "correlation_scope", "current_correlation_id", "message_context"]
