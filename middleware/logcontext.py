"""The running message's context in every log line, and nothing of it left after the message."""

from __future__ import annotations

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware

from runtime import MESSAGE_CONTEXT


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
        MESSAGE_CONTEXT.set(context)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        MESSAGE_CONTEXT.set(None)
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        MESSAGE_CONTEXT.set(None)
        structlog.contextvars.clear_contextvars()
