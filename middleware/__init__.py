"""atelier's Dramatiq middleware, one class per module.

The stack, in order (Dramatiq calls before_* hooks in this order, after_* hooks too):

1. AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, CurrentMessage:
   Dramatiq's own; CurrentMessage lets actors and middleware see the running message.
2. Metrics: counts and times every message in the shared MetricsStore (when given one).
3. LogContext: binds actor/message_id/queue into structlog before anything logs.
4. ClassifiedRetries: Dramatiq's Retries with PermanentError never retried.
"""

from collections.abc import Callable

from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from domain.ports import MetricsStore
from middleware.logcontext import LogContext
from middleware.metrics import Metrics
from middleware.retries import ClassifiedRetries


def build_stack(*, max_retries: int = 20, min_backoff_ms: int = 1000,
                max_backoff_ms: int = 300_000,
                metrics_store: Callable[[], MetricsStore] | None = None) -> list[Middleware]:
    """The middleware list every broker in atelier is built with."""
    return [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        *([Metrics(metrics_store)] if metrics_store is not None else []),
        LogContext(),
        ClassifiedRetries(max_retries=max_retries, min_backoff=min_backoff_ms, max_backoff=max_backoff_ms),
    ]


__all__ = ["ClassifiedRetries", "LogContext", "Metrics", "build_stack"]
