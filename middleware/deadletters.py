"""Dead-letter routing: messages that failed for good go to a durable, queryable store."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dramatiq import Broker, Message
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from brokers.admission import CARRIER_ACTOR, Junk, letter_for
from brokers.park import fresh_copy, park
from domain.errors import PermanentError
from domain.ports import DeadLetterStore, LetterFallback, MetricsStore
from domain.resilience import TRANSIENT_OPTIONS, DeadLetter, bounded_letter, enqueued_at

#: Counter of dead letters written, labels (queue_name, actor_name, reason).
DEAD_LETTERS = "atelier_dead_letters_total"
#: Counter of dead-letter writes that failed and were put back to try again, labels (queue_name,
#: actor_name): while it rises, letters are waiting in the broker for the store to come back.
DEAD_LETTER_WRITE_FAILURES = "atelier_dead_letter_write_failures_total"
#: The first retry of a failed dead-letter write waits this long; it doubles up to 15 minutes
#: (park.MAX_DELAY_MS: longer delays are not safe on RabbitMQ).
WRITE_RETRY_MS = 10_000
WRITE_RETRY_MAX_MS = 900_000
#: After this many failed writes of one letter (about five minutes of them) it goes to the
#: LetterFallback instead of back to the broker, where an operator sees it.
FALLBACK_AFTER_ATTEMPTS = 5
#: Counter of letters kept in the fallback store, labels (queue_name, actor_name).
DEAD_LETTERS_FALLBACK = "atelier_dead_letters_fallback_total"


class MessageExpired(Exception):
    """A message failed before it ran (AgeLimit: older than its max_age)."""


def _now() -> datetime:
    return datetime.now(UTC)


def letter_of(broker: Broker, message: Message, exception: BaseException) -> DeadLetter:
    """What the store keeps of a message that failed for good (after Retries had its say),
    bounded so that the store accepts it whatever the message held."""
    options = message.options
    # ClassifiedRetries says why it gave up; a message failed by anything else was not retried.
    reason = options.get("failed_because") or ("permanent" if isinstance(exception, PermanentError)
                                               else "not_retried")
    # Retries counts the attempt it just saw when it retries or gives up, not for permanent errors.
    retries = options.get("retries", 0)
    retries = retries if isinstance(retries, int) else 0
    attempts = retries + (0 if reason in ("retries_exhausted", "retry_enqueue_failed", "expired") else 1)
    error = str(exception)
    if options.get("failed_detail"):
        error = str(options["failed_detail"])
    if reason == "retry_enqueue_failed":
        error = f"{error} (then the retry could not be enqueued: {options['retry_enqueue_error']})"
    args = message.args
    kwargs = message.kwargs
    return bounded_letter(DeadLetter(
        id=str(uuid.uuid4()),
        message_id=str(message.message_id),
        actor=str(message.actor_name),
        queue=q_name(str(message.queue_name)),
        args=list(args) if isinstance(args, list | tuple) else [args],
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {"kwargs": kwargs},
        options={k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS},
        error_type=f"{type(exception).__module__}.{type(exception).__qualname__}",
        error=error,
        traceback="".join(traceback.format_exception(type(exception), exception, exception.__traceback__,
                                                     limit=30)),
        reason=reason,
        attempts=attempts,
        enqueued_at=enqueued_at(message.message_timestamp),
        failed_at=_now(),
        correlation_id=options.get("correlation_id") if isinstance(options.get("correlation_id"), str) else None,
    ))


class DeadLetters(Middleware):
    """Writes every message that failed for good (a permanent error, retries exhausted, a retry
    that could not be enqueued) to the DeadLetterStore: actor, queue, arguments, options, error
    type and text, traceback, correlation id, attempts and times. The same on every broker;
    Dramatiq's own dead-letter queue (XQ) still gets the message as well, as before.

    It must see Retries' decision, so its after_process_message runs after Retries' (it comes
    before Retries in the middleware list; Dramatiq calls after-hooks in reverse order).

    If the write fails (database down), the message is not lost: the same message is put back
    on its queue, delayed, carrying its dead letter in the ``dead_letter`` option; when it comes
    round this middleware writes the letter instead of running the actor (and tries again later,
    waiting twice as long, while the store stays down). Only if the broker refuses that too does
    the message rest in Dramatiq's XQ alone (logged as critical).

    A letter the store refused FALLBACK_AFTER_ATTEMPTS times (a database down for minutes, or a
    letter it will never take) goes to the LetterFallback when there is one, with an ERROR line
    and a count: ``atelier dlq list`` shows how many wait there, ``atelier dlq restore`` moves
    them to the store.

    Parameters:
      store: callable returning the DeadLetterStore, resolved on first use.
      metrics: optional callable returning the MetricsStore that counts dead letters.
      fallback: optional callable returning the LetterFallback.
    """

    def __init__(self, store: Callable[[], DeadLetterStore], *,
                 metrics: Callable[[], MetricsStore] | None = None,
                 fallback: Callable[[], LetterFallback] | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._store: DeadLetterStore | None = None
        self._fallback_factory = fallback
        self._metrics_factory = metrics
        self._carried: set[str] = set()  # carriers whose letter before_process_message wrote

    @property
    def store(self) -> DeadLetterStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    @property
    def actor_options(self) -> set[str]:
        return {"dead_letter_expired"}

    def before_process_message(self, broker: Broker, message: Message) -> None:
        pending: dict[str, Any] | None = message.options.get("dead_letter")
        if pending is None:
            return
        # A dead letter whose first write failed: write it now; the actor does not run again.
        self._carried.add(message.message_id)
        self._write_pending(broker, message, pending)
        raise SkipMessage("dead letter written")

    def _write_pending(self, broker: Broker, message: Message, pending: dict[str, Any]) -> None:
        attempts = int(message.options.get("dead_letter_attempts", 1))
        self._write(broker, message, DeadLetter.fromdict(pending), attempts)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        """A message failed by a middleware before it ran: AgeLimit's, past its ``max_age``. It is
        dead-lettered (reason ``expired``) unless its actor says ``dead_letter_expired=False``
        (periodic ticks, whose expiry is intended). A carrier of a letter still to write that
        expired on the way writes its letter now instead of losing it to the broker's XQ."""
        if self._carried and message.message_id in self._carried:
            self._carried.discard(message.message_id)  # before_process_message handled it
            return
        if not message.failed:
            return
        options = message.options
        pending = options.get("dead_letter")
        if pending is not None:
            self._write_pending(broker, message, pending)
            return
        actor_options = broker.get_actor(message.actor_name).options
        if options.get("dead_letter_expired", actor_options.get("dead_letter_expired", True)) is False:
            return
        max_age = options.get("max_age") or actor_options.get("max_age")
        options["failed_because"] = "expired"
        error = MessageExpired(f"not run: older than its max_age of {max_age} ms" if max_age
                               else "not run: failed by a middleware before it ran")
        self._write(broker, message, letter_of(broker, message, error), 0)

    def before_nack(self, broker: Broker, message: Message) -> None:
        """A message rejected without having run: a carrier made at admission (undecodable body,
        arguments or options of the wrong shape, an actor this worker does not declare) writes its
        letter here; a message for an undeclared actor that came another way gets one too.
        Messages that ran and failed had their letter written after they ran."""
        if message.actor_name == CARRIER_ACTOR:
            pending = message.options.get("dead_letter")
            if isinstance(pending, dict):
                self._write_pending(broker, message, pending)
            return
        if message.actor_name not in broker.actors and "dead_letter" not in message.options:
            junk = Junk("unknown_actor", f"no actor named {message.actor_name!r} is declared by this worker")
            self._write(broker, message, letter_for(message.queue_name, message, junk), 0)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if exception is None or not message.failed:
            return
        self._write(broker, message, letter_of(broker, message, exception), 0)

    def _write(self, broker: Broker, message: Message, letter: DeadLetter, attempts: int) -> None:
        try:
            stored = self.store.add(letter)
        except Exception:
            if attempts + 1 >= FALLBACK_AFTER_ATTEMPTS and self._keep_aside(message, letter, attempts + 1):
                return
            delay = min(WRITE_RETRY_MS * 2 ** attempts, WRITE_RETRY_MAX_MS)
            try:
                parked = fresh_copy(message, dead_letter=letter.asdict(), dead_letter_attempts=attempts + 1)
                park(broker, parked, delay)
            except Exception:
                message.fail()  # at least it rests in the broker's own dead-letter queue
                self.logger.critical("Could not store dead letter of message %r nor put it back; it is only "
                                     "in the broker's dead-letter queue.", message.message_id, exc_info=True)
                return
            self.logger.error("Could not store dead letter of message %r; trying again in %d ms.",
                              message.message_id, delay, exc_info=True)
            self._count(DEAD_LETTER_WRITE_FAILURES, (letter.queue, letter.actor))
            return
        if not stored:
            return  # written before (a redelivery of the same failure)
        message.options["dead_letter_id"] = letter.id  # for the job record (middleware/jobs.py)
        self.logger.warning("Dead-lettered message %r (%s, %s after %d attempt(s)): letter %s.",
                            message.message_id, letter.actor, letter.reason, letter.attempts, letter.id)
        self._count(DEAD_LETTERS, (letter.queue, letter.actor, letter.reason))

    def _keep_aside(self, message: Message, letter: DeadLetter, failures: int) -> bool:
        """Put the letter in the fallback store; False when there is none or it failed too."""
        if self._fallback_factory is None:
            return False
        try:
            self._fallback_factory().add(letter)
        except Exception:
            self.logger.error("Could not keep dead letter of message %r in the fallback store either.",
                              message.message_id, exc_info=True)
            return False
        self.logger.error("The dead-letter store refused the letter of message %r %d times; it is kept in the "
                          "fallback store as %s (atelier dlq restore moves it back).", message.message_id,
                          failures, letter.id, exc_info=True)
        self._count(DEAD_LETTERS_FALLBACK, (letter.queue, letter.actor))
        return True

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        if self._metrics_factory is None:
            return
        try:
            self._metrics_factory().add([(name, labels, 1)])
        except Exception:  # a metric is never worth failing a message
            self.logger.debug("Could not count %s.", name, exc_info=True)
