"""Bind message context into structlog for the duration of a message."""

from __future__ import annotations

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware


class LogContext(Middleware):
    """Binds actor, message_id, queue and retries into structlog's contextvars while a
    message runs (and correlation_id, causation_id when the message carries them: see
    Correlation), and clears them afterwards so nothing leaks into the next message
    handled by the same worker thread. Takes no parameters."""

    def before_process_message(self, broker: Broker, message: Message) -> None:
        structlog.contextvars.clear_contextvars()
        options = message.options
        context = {"actor": message.actor_name, "message_id": message.message_id, "queue": message.queue_name,
                   "retries": options.get("retries", 0)}
        # One bind for everything: binding is the costly part of this hook.
        if "correlation_id" in options:
            context["correlation_id"] = options["correlation_id"]
            if "causation_id" in options:
                context["causation_id"] = options["causation_id"]
        structlog.contextvars.bind_contextvars(**context)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        structlog.contextvars.clear_contextvars()
