"""Correlation and causation ids on every message, in every log line while it runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware

from middleware.logcontext import _message_context_for_update

#: (message id, correlation id) of the message running in this thread (or context): what it
#: sends inherits the correlation id and names it as the cause.
_running: ContextVar[tuple[str, str] | None] = ContextVar("atelier_running_message", default=None)
#: The correlation id of an enclosing correlation_scope.
_scope: ContextVar[str | None] = ContextVar("atelier_correlation_scope", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str | None:
    """The correlation id a message sent from here would carry (None: it would get a new one)."""
    scope = _scope.get()
    if scope is not None:
        return scope
    running = _running.get()
    if running is not None:
        return running[1]
    bound = structlog.contextvars.get_contextvars().get("correlation_id")
    return str(bound) if bound else None


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Producers: every message sent inside carries this correlation id (a new one if None), and
    log lines carry it too. ``with correlation_scope(request_id): actor.send(...)``. Inside an
    actor it overrides the running message's id for what is sent in the block."""
    correlation_id = correlation_id or new_correlation_id()
    scope_token = _scope.set(correlation_id)
    tokens = structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    try:
        yield correlation_id
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
        _scope.reset(scope_token)


class Correlation(Middleware):
    """Stamps ``correlation_id`` and ``causation_id`` message options at first enqueue; while the
    message runs both are in its log lines (LogContext puts them in the message's log context).

    correlation_id: kept if the producer set it (send_with_options), else the enclosing
    correlation_scope's, else the running message's (sent from inside an actor), else one bound
    in structlog's contextvars by the producer, else new.
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
        options["correlation_id"] = current_correlation_id() or new_correlation_id()
        if running is not None and running[0] != message.message_id and "causation_id" not in options:
            options["causation_id"] = running[0]

    def before_process_message(self, broker: Broker, message: Message) -> None:
        correlation_id = message.options.get("correlation_id")
        if not correlation_id:
            # Sent before this middleware existed: give it one for its log lines and for what it
            # sends (LogContext, before this in the stack, found none to put in the log context).
            correlation_id = new_correlation_id()
            context = _message_context_for_update()
            if context is not None:
                context["correlation_id"] = correlation_id
        _running.set((message.message_id, correlation_id))

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        _running.set(None)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        _running.set(None)
