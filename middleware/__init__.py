"""atelier's Dramatiq middleware, one class per module.

The stack, in order (Dramatiq calls before_* hooks in this order, after_* hooks too):

1. AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, CurrentMessage:
   Dramatiq's own; CurrentMessage lets actors and middleware see the running message.
2. LogContext: binds actor/message_id/queue into structlog before anything logs.
3. ClassifiedRetries: Dramatiq's Retries with PermanentError never retried.
"""

from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from middleware.logcontext import LogContext
from middleware.retries import ClassifiedRetries


def build_stack(*, max_retries: int = 20, min_backoff_ms: int = 1000,
                max_backoff_ms: int = 300_000) -> list[Middleware]:
    """The middleware list every broker in atelier is built with."""
    return [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        LogContext(),
        ClassifiedRetries(max_retries=max_retries, min_backoff=min_backoff_ms, max_backoff=max_backoff_ms),
    ]


__all__ = ["ClassifiedRetries", "LogContext", "build_stack"]
