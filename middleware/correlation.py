"""Correlation and causation ids on every message, bound into structlog while it runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware

#: The message running in this thread (or context), for the causation id of what it sends.
_running: ContextVar[str | None] = ContextVar("atelier_running_message", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Producers: every message sent inside carries this correlation id (a new one if None), and
    log lines carry it too. ``with correlation_scope(request_id): actor.send(...)``."""
    correlation_id = correlation_id or new_correlation_id()
    tokens = structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    try:
        yield correlation_id
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


class Correlation(Middleware):
    """Stamps ``correlation_id`` and ``causation_id`` message options at first enqueue; while the
    message runs both are in structlog's context (LogContext binds them with the rest of the
    message's context, and clears them afterwards).

    correlation_id: kept if the producer set it (send_with_options), else the one bound in the
    sender's structlog context (a running message's, or a producer's correlation_scope), else new.
    causation_id: the id of the message running in the sending thread, if any.

    Only a message without a correlation id is stamped, which makes every later enqueue of the
    same message (retries, delayed messages moving to their queue, parking) leave it as it is.
    Takes no parameters.
    """

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        options = message.options
        if "correlation_id" in options:
            return
        running = _running.get()
        options["correlation_id"] = (structlog.contextvars.get_contextvars().get("correlation_id")
                                     or new_correlation_id())
        if running is not None and running != message.message_id and "causation_id" not in options:
            options["causation_id"] = running

    def before_process_message(self, broker: Broker, message: Message) -> None:
        _running.set(message.message_id)
        # LogContext (before this in the stack) binds the ids a message carries along with the rest
        # of its context. A message sent before this middleware existed carries none: give it one
        # for its log lines and for what it sends.
        if not message.options.get("correlation_id"):
            structlog.contextvars.bind_contextvars(correlation_id=new_correlation_id())

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        _running.set(None)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        _running.set(None)
