"""The running message's context in every log line, and nothing of it left after the message."""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware

#: actor, message_id, queue, retries, correlation_id, causation_id of the message running in this
#: thread (or context); None between messages.
_message: ContextVar[dict[str, Any] | None] = ContextVar("atelier_message_context", default=None)


def merge_message_context(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
                          ) -> MutableMapping[str, Any]:
    """structlog processor: adds the running message's context to the event. Placed after
    merge_contextvars, so what code binds itself (a correlation_scope, say) wins over it."""
    context = _message.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def message_context() -> dict[str, Any]:
    """What a log line written now would carry from context: the running message's context
    under what is bound in structlog's contextvars."""
    return {**(_message.get() or {}), **structlog.contextvars.get_contextvars()}


def _message_context_for_update() -> dict[str, Any] | None:
    """The running message's context itself, for the middleware that add to it (Correlation)."""
    return _message.get()


class LogContext(Middleware):
    """Puts actor, message_id, queue and retries (and correlation_id, causation_id when the
    message carries them: see Correlation) into the context of every log line while a message
    runs (the ``merge_message_context`` processor), and afterwards clears it together with
    whatever the actor bound in structlog's contextvars, so nothing leaks into the next message
    handled by the same worker thread. Takes no parameters.

    The message's own context is one ContextVar holding a dict, set once per message: binding
    each key as a structlog contextvar and clearing them all again cost several times as much,
    on every message."""

    def before_process_message(self, broker: Broker, message: Message) -> None:
        options = message.options
        context = {"actor": message.actor_name, "message_id": message.message_id, "queue": message.queue_name,
                   "retries": options.get("retries", 0)}
        correlation_id = options.get("correlation_id")
        if correlation_id is not None:
            context["correlation_id"] = correlation_id
            causation_id = options.get("causation_id")
            if causation_id is not None:
                context["causation_id"] = causation_id
        _message.set(context)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        _message.set(None)
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        _message.set(None)
        structlog.contextvars.clear_contextvars()
