"""Dramatiq's Retries, with failures classified by the domain's error types."""

from __future__ import annotations

from dramatiq import Broker, Message
from dramatiq.middleware import Retries

from domain.errors import PermanentError


class ClassifiedRetries(Retries):
    """Retries with exponential backoff and jitter (Dramatiq's own), except that a
    PermanentError is never retried: the message fails at once, for the dead-letter
    middleware to record. Unknown exceptions and TransientError are retried.

    Parameters are Retries' own: max_retries, min_backoff, max_backoff (milliseconds),
    retry_when; all can be set per actor.
    """

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if isinstance(exception, PermanentError):
            self.logger.warning(
                "Permanent failure of message %r, not retried: %s", message.message_id, exception
            )
            message.fail()
            return
        super().after_process_message(broker, message, result=result, exception=exception)
