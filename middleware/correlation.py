"""Correlation and causation ids on every message, in every log line while it runs.

The ids live in runtime (current_correlation_id, correlation_scope), which code outside the
middleware reads without importing it."""

from __future__ import annotations

from dramatiq import Broker, Message
from dramatiq.middleware import Middleware

from runtime import MESSAGE_CONTEXT, RUNNING_MESSAGE, current_correlation_id, new_correlation_id


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
        running = RUNNING_MESSAGE.get()
        options["correlation_id"] = current_correlation_id() or new_correlation_id()
        if running is not None and running[0] != message.message_id and "causation_id" not in options:
            options["causation_id"] = running[0]

    def before_process_message(self, broker: Broker, message: Message) -> None:
        correlation_id = message.options.get("correlation_id")
        if not correlation_id:
            # Sent before this middleware existed: give it one for its log lines and for what it
            # sends (LogContext, before this in the stack, found none to put in the log context).
            correlation_id = new_correlation_id()
            context = MESSAGE_CONTEXT.get()
            if context is not None:
                context["correlation_id"] = correlation_id
        RUNNING_MESSAGE.set((message.message_id, correlation_id))

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        RUNNING_MESSAGE.set(None)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        RUNNING_MESSAGE.set(None)
