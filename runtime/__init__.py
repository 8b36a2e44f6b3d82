"""The running message's context, shared by the middleware that set it and the code that reads it.

A neutral module: middleware write these context variables, adapters and actors read them, and
neither has to import the other. It imports nothing of atelier.

- correlation: the correlation id a message sent from here would carry (``current_correlation_id``,
  ``correlation_scope`` for producers);
- the message's log context (``message_context``, ``merge_message_context`` for structlog);
- dependency contact: ``dependency_reached()``, called by adapters when they call a dependency
  guarded by a circuit breaker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import structlog

#: (message id, correlation id) of the message running in this thread (or context): what it
#: sends inherits the correlation id and names it as the cause. Set by the Correlation middleware.
RUNNING_MESSAGE: ContextVar[tuple[str, str] | None] = ContextVar("atelier_running_message", default=None)
#: The correlation id of an enclosing correlation_scope.
_scope: ContextVar[str | None] = ContextVar("atelier_correlation_scope", default=None)
#: actor, message_id, queue, retries, correlation_id, causation_id of the message running in this
#: thread (or context); None between messages. Set by the LogContext middleware.
MESSAGE_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("atelier_message_context", default=None)
#: While a message of an actor with circuit_requires_contact runs: a one-item list, set True once
#: the guarded dependency was called. None otherwise. Set by the CircuitBreaker middleware.
DEPENDENCY_CONTACT: ContextVar[list[bool] | None] = ContextVar("atelier_circuit_contact", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str | None:
    """The correlation id a message sent from here would carry (None: it would get a new one)."""
    scope = _scope.get()
    if scope is not None:
        return scope
    running = RUNNING_MESSAGE.get()
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


def merge_message_context(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
                          ) -> MutableMapping[str, Any]:
    """structlog processor: adds the running message's context to the event. Placed after
    merge_contextvars, so what code binds itself (a correlation_scope, say) wins over it."""
    context = MESSAGE_CONTEXT.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def message_context() -> dict[str, Any]:
    """What a log line written now would carry from context: the running message's context
    under what is bound in structlog's contextvars."""
    return {**(MESSAGE_CONTEXT.get() or {}), **structlog.contextvars.get_contextvars()}


def dependency_reached() -> None:
    """Called by an adapter when it calls the guarded dependency (whatever the answer). For an
    actor with ``circuit_requires_contact=True``, only a run that did so counts as a success of
    its circuit; elsewhere it does nothing."""
    contact = DEPENDENCY_CONTACT.get()
    if contact is not None:
        contact[0] = True
