"""Dramatiq's Retries, with failures classified by the domain's error types."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message, Retry
from dramatiq.middleware import Retries, SkipMessage

from brokers.park import MAX_DELAY_MS, park
from domain.errors import Cancelled, Paced, PermanentError, TransientError
from domain.ports import DedupStore
from domain.resilience import RETRY_CLAIM_DEAD, RETRY_CLAIM_DEAD_TTL_MS, RETRY_CLAIM_RUN, retry_claim_key

#: The longest wait a dependency's Retry-After is honoured for; longer (or an HTTP date in year
#: 9999) is cut to this. A wait past MAX_DELAY_MS is served in parks of at most MAX_DELAY_MS.
RETRY_AFTER_MAX_MS = 24 * 3600 * 1000


def retry_after_ms(seconds: Any) -> int | None:
    """A dependency's Retry-After in milliseconds within [0, RETRY_AFTER_MAX_MS]; None when it is
    not a finite number (the ordinary backoff applies)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return int(min(max(value, 0.0) * 1000, RETRY_AFTER_MAX_MS))


def signature_mismatch(broker: Broker, message: Message) -> str | None:
    """Why the message's arguments cannot be passed to its actor, or None when they can."""
    try:
        actor = broker.get_actor(message.actor_name)
        signature = inspect.signature(actor.fn)
    except Exception:
        return None
    try:
        signature.bind(*message.args, **message.kwargs)
    except TypeError as exc:
        shown = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                              for p in signature.parameters.values()],
                                  return_annotation=inspect.Signature.empty)
        return (f"{message.actor_name}{shown} cannot take args={list(message.args)!r:.200} "
                f"kwargs={dict(message.kwargs)!r:.200}: {exc}")
    return None


class ClassifiedRetries(Retries):
    """Retries with exponential backoff and jitter (Dramatiq's own), except that a
    PermanentError is never retried: the message fails at once, for the dead-letter
    middleware to record. Unknown exceptions and TransientError are retried; a TransientError
    carrying ``retry_after`` (an HTTP 429's Retry-After) is retried after that many seconds
    instead of the backoff.

    Parameters are Retries' own: max_retries, min_backoff, max_backoff (milliseconds),
    retry_when; all can be set per actor.

    A TypeError raised because the message's arguments do not fit the actor's signature (wrong
    count, unknown keyword) can never succeed: it fails at once, reason ``invalid_arguments``.
    A PermanentError carrying a ``reason`` attribute gives that reason to its dead letter.

    Retry-After waits are bounded: non-finite values fall back to the backoff, anything longer
    than RETRY_AFTER_MAX_MS is cut to it, and a wait longer than one park (MAX_DELAY_MS, kept
    under RabbitMQ's consumer_timeout) is served in several: the message carries ``not_before``
    and is parked again, without running, until then.

    A Paced message (sending now would go over a channel's rate) is not a failure: it is parked
    for its wait, same id, its retry count untouched, and runs again then; if it cannot be parked
    it is retried as usual rather than lost. An actor that can be paced declares
    ``throws=(Paced,)`` so that Dramatiq's worker logs it at INFO, not as an unhandled error (this
    hook runs first: Dramatiq's Retries never sees a Paced message, so ``throws`` fails nothing).

    A retry whose re-enqueue fails (broker unreachable) is not acknowledged and lost, as Dramatiq
    1.x's Retries does (its issue 545: the exception is swallowed by the hook machinery and the
    message acked): the message is failed instead, with ``retry_enqueue_error`` in its options,
    for the dead-letter middleware to store.

    Such an enqueue may have reached the broker all the same (a publish confirm lost with the
    connection): with ``retry_claims`` (the DedupStore), the dead letter claims that attempt
    first, and the retry, if it exists, is skipped when it starts (Dedup claims it for the run);
    if the retry has started already, it carries the message on and nothing is dead-lettered.
    """

    def before_process_message(self, broker: Broker, message: Message) -> None:
        not_before = message.options.get("not_before")
        if not_before is None:
            return
        wait = not_before - int(time.time() * 1000)
        if wait <= 0:
            return
        try:
            park(broker, message, wait)
        except Exception:  # running early costs one more refusal by the dependency; losing it is worse
            self.logger.warning("Could not park message %r until its Retry-After; running it now.",
                                message.message_id, exc_info=True)
            return
        raise SkipMessage(f"parked again: the dependency asked to wait {wait} ms more")

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if isinstance(exception, Cancelled):
            return  # cancelled on request (middleware/jobs.py): neither retried nor failed, so no dead letter
        if isinstance(exception, PermanentError):
            self.logger.warning(
                "Permanent failure of message %r, not retried: %s", message.message_id, exception
            )
            message.options["failed_because"] = str(getattr(exception, "reason", None) or "permanent")
            message.fail()
            return
        if exception is None:
            return
        if isinstance(exception, Paced):
            wait = retry_after_ms(exception.wait_s)
            delay = min(wait if wait is not None else 1000, MAX_DELAY_MS)
            if wait is not None and wait > delay:
                message.options["not_before"] = int(time.time() * 1000) + wait
            try:
                park(broker, message, max(delay, 1))
                return
            except Exception:  # retried below: it costs a retry, and nothing is lost
                self.logger.warning("Could not park paced message %r; retrying it instead.", message.message_id,
                                    exc_info=True)
                exception = Retry(str(exception), delay=max(delay, 1))
        if isinstance(exception, TypeError):
            mismatch = signature_mismatch(broker, message)
            if mismatch is not None:
                self.logger.warning("Message %r does not fit its actor, not retried: %s", message.message_id,
                                    mismatch)
                message.options["failed_because"] = "invalid_arguments"
                message.options["failed_detail"] = mismatch
                message.fail()
                return
        if isinstance(exception, TransientError) and exception.retry_after is not None:
            wait = retry_after_ms(exception.retry_after)
            if wait is not None:
                # Retries takes a Retry's delay as given: the dependency said when to come back.
                delay = min(wait, MAX_DELAY_MS)
                if wait > delay:
                    message.options["not_before"] = int(time.time() * 1000) + wait
                exception = Retry(str(exception), delay=max(delay, 1))
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
            if message.failed:
                throws = message.options.get("throws") or broker.get_actor(message.actor_name).options.get("throws")
                message.options["failed_because"] = (
                    "not_retried" if throws and isinstance(exception, throws) else "retries_exhausted")
        except Exception as exc:
            if message.failed:  # already given up on (e.g. on_retry_exhausted could not be sent)
                raise
            if self._retry_started(message):
                return
            message.options["retry_enqueue_error"] = f"{type(exc).__name__}: {exc}"
            message.options["failed_because"] = "retry_enqueue_failed"
            message.fail()
            self.logger.error("Could not re-enqueue message %r for its retry; dead-lettering it instead.",
                              message.message_id, exc_info=True)

    # --- a retry whose enqueue raised but reached the broker (issue 16, item 8) ---

    def __init__(self, *, retry_claims: Callable[[], DedupStore] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.retry_claims = retry_claims

    def _retry_started(self, message: Message) -> bool:
        """Claim this retry's attempt for the dead letter; True if the retry claimed it first (it
        reached the broker and has started: it carries the message on, nothing to dead-letter)."""
        retries = message.options.get("retries")
        if self.retry_claims is None or not isinstance(retries, int):
            return False
        try:
            held = self.retry_claims().claim(retry_claim_key(message.message_id, retries), RETRY_CLAIM_DEAD,
                                             RETRY_CLAIM_DEAD_TTL_MS)
        except Exception:
            self.logger.warning("Could not claim retry %d of message %r for its dead letter; if the retry "
                                "reached the broker it runs as well.", retries, message.message_id, exc_info=True)
            return False
        if held != RETRY_CLAIM_RUN:
            return False
        self.logger.warning("Retry %d of message %r was reported not enqueued, but it reached the broker and has "
                            "started: not dead-lettered.", retries, message.message_id)
        return True
