"""Bind message context into structlog for the duration of a message."""

from __future__ import annotations

import structlog
from dramatiq import Broker, Message
from dramatiq.middleware import Middleware


class LogContext(Middleware):
    """Binds actor, message_id, queue and retries into structlog's contextvars while a
    message runs, and clears them afterwards so nothing leaks into the next message
    handled by the same worker thread. Takes no parameters."""

    def before_process_message(self, broker: Broker, message: Message) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            actor=message.actor_name,
            message_id=message.message_id,
            queue=message.queue_name,
            retries=message.options.get("retries", 0),
        )

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        structlog.contextvars.clear_contextvars()
