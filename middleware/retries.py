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

    A retry whose re-enqueue fails (broker unreachable) is not acknowledged and lost, as Dramatiq
    1.x's Retries does (its issue 545: the exception is swallowed by the hook machinery and the
    message acked): the message is failed instead, with ``retry_enqueue_error`` in its options,
    for the dead-letter middleware to store.
    """

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if isinstance(exception, PermanentError):
            self.logger.warning(
                "Permanent failure of message %r, not retried: %s", message.message_id, exception
            )
            message.options["failed_because"] = "permanent"
            message.fail()
            return
        if exception is None:
            return
        if isinstance(exception, TransientError) and exception.retry_after is not None:
            # Retries takes a Retry's delay as given: the dependency said when to come back.
            exception = Retry(str(exception), delay=int(exception.retry_after * 1000))
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
            if message.failed:
                throws = message.options.get("throws") or broker.get_actor(message.actor_name).options.get("throws")
                message.options["failed_because"] = (
                    "not_retried" if throws and isinstance(exception, throws) else "retries_exhausted")
        except Exception as exc:
            if message.failed:  # already given up on (e.g. on_retry_exhausted could not be sent)
                raise
            message.options["retry_enqueue_error"] = f"{type(exc).__name__}: {exc}"
            message.options["failed_because"] = "retry_enqueue_failed"
            message.fail()
            self.logger.error("Could not re-enqueue message %r for its retry; dead-lettering it instead.",
                              message.message_id, exc_info=True)
