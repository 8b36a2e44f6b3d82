"""Dramatiq's Retries, with failures classified by the domain's error types."""

from __future__ import annotations

from dramatiq import Broker, Message, Retry
from dramatiq.middleware import Retries

from domain.errors import PermanentError, TransientError


class ClassifiedRetries(Retries):
    """Retries with exponential backoff and jitter (Dramatiq's own), except that a
    PermanentError is never retried: the message fails at once, for the dead-letter
    middleware to record. Unknown exceptions and TransientError are retried; a TransientError
    carrying ``retry_after`` (an HTTP 429's Retry-After) is retried after that many seconds
    instead of the backoff.

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
        if isinstance(exception, TransientError) and exception.retry_after is not None:
            # Retries takes a Retry's delay as given: the dependency said when to come back.
            exception = Retry(str(exception), delay=int(exception.retry_after * 1000))
        super().after_process_message(broker, message, result=result, exception=exception)
