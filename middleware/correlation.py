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
    """Stamps ``correlation_id`` and ``causation_id`` message options at first enqueue, and binds
    both into structlog's context while the message runs (LogContext clears them afterwards).

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
        options = message.options
        # Messages from before this middleware existed carry none: give them one for their logs.
        correlation_id = options.get("correlation_id") or new_correlation_id()
        causation_id = options.get("causation_id")
        if causation_id:
            structlog.contextvars.bind_contextvars(correlation_id=correlation_id, causation_id=causation_id)
        else:
            structlog.contextvars.bind_contextvars(correlation_id=correlation_id)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        _running.set(None)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        _running.set(None)
