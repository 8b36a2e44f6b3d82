"""Admission: every delivery a consumer hands on can be run, or is a carrier of its own dead letter.

Producers that are not atelier's (plain Dramatiq, other languages, raw bodies written to the
broker) can send what Dramatiq's worker cannot handle: a body that is not a message, arguments
that are not a list, options of the wrong type, an actor this worker does not declare, a queue
name that is not the queue it came from. Dramatiq drops some of those in its XQ alone, retries
some for ever, and some kill a worker thread (a queue name it has no consumer for).

atelier's consumers pass each delivery through ``admit`` before anything else sees it:
- a queue name other than the queue it came from is set to that queue (the delivery must be
  acknowledged to the consumer it came from);
- anything that cannot run becomes a *carrier*: the same delivery (same broker id, same
  acknowledgement), whose actor is ``CARRIER_ACTOR``, which no worker declares, and whose
  ``dead_letter`` option holds the letter to write (reason, error, and what could be read of the
  original: actor, arguments, options, or the raw body). The worker rejects a message for an
  undeclared actor at once, without running any process hook (no dedup key, no breaker trial),
  and the DeadLetters middleware writes the letter in ``before_nack``, as it does for every
  message rejected without one (an actor unknown to this worker included).

The checks are cheap (types and lengths, no I/O): they run on the consumer thread for every
message. Whether the arguments fit the actor's signature is decided only when a call raises
TypeError (middleware/retries.py), so a good message pays nothing for it.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

from dramatiq import Broker, Message, get_encoder
from dramatiq.common import q_name

from brokers.park import MAX_DELAY_MS
from domain.resilience import TRANSIENT_OPTIONS, DeadLetter, bounded_letter, enqueued_at

#: The actor name of a carrier: never declared, so the worker rejects it before it runs.
CARRIER_ACTOR = "atelier.dead_letter_carrier"
#: Raw bytes kept of an undecodable body.
RAW_BODY_LIMIT = 64 * 1024

#: Options Dramatiq or atelier read as numbers, and what each must be.
_INT_OPTIONS = ("retries", "min_backoff", "max_backoff", "eta", "requeue_timestamp", "dead_letter_attempts",
                "not_before")
#: Integers that may also be None (Dramatiq: max_retries=None retries for ever).
_OPTIONAL_INT_OPTIONS = ("max_retries",)
_NUMBER_OPTIONS = ("max_age", "time_limit", "dedup_window", "retry_after_ms", "circuit_failure_threshold",
                   "circuit_window", "circuit_reset_timeout", "circuit_half_open_trials")
_STR_OPTIONS = ("correlation_id", "causation_id", "dedup_key", "circuit", "redis_message_id")
#: Options the middleware write when a message fails; a producer's copy would give its letter a
#: made-up reason.
_FORGED = frozenset({"failed_because", "failed_detail", "retry_enqueue_error"})
#: Longest message id the dead-letter store keeps (adapters/sql/tables.py); longer ones cannot be
#: acknowledged reliably everywhere either, so they are refused at the door.
MAX_ID_LENGTH = 64
_NAME_LIMIT = 256


class Junk(Exception):
    """What made a delivery a carrier; ``reason`` is the dead letter's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and value == value and value not in (float("inf"),
                                                                                            float("-inf"))


def check(broker: Broker, message: Message) -> None:
    """Raise Junk if ``message`` cannot be run by this worker as it is."""
    if not isinstance(message.message_id, str) or not 0 < len(message.message_id) <= MAX_ID_LENGTH:
        raise Junk("invalid_message", f"message_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if not isinstance(message.actor_name, str) or not 0 < len(message.actor_name) <= _NAME_LIMIT:
        raise Junk("invalid_message", "actor_name must be a non-empty string")
    if not isinstance(message.queue_name, str):
        raise Junk("invalid_message", "queue_name must be a string")
    if not _is_int(message.message_timestamp) or message.message_timestamp < 0:
        raise Junk("invalid_message", "message_timestamp must be a non-negative integer (epoch milliseconds)")
    if not isinstance(message.args, list | tuple):
        raise Junk("invalid_arguments", f"args must be a list, not {type(message.args).__name__}")
    if not isinstance(message.kwargs, dict) or not all(isinstance(k, str) for k in message.kwargs):
        raise Junk("invalid_arguments", "kwargs must be an object with string keys")
    options = message.options
    if not isinstance(options, dict):
        raise Junk("invalid_options", f"options must be an object, not {type(options).__name__}")
    if "throws" in options:
        # Dramatiq's worker runs isinstance(exception, throws): JSON cannot carry a class, and
        # anything else kills the worker thread.
        raise Junk("invalid_options", "option throws cannot be set by a producer (it names exception classes)")
    if "dead_letter" in options:
        try:
            DeadLetter.fromdict(options["dead_letter"])
        except Exception as exc:
            raise Junk("invalid_options", f"option dead_letter is not a dead letter: {exc!r:.120}") from None
    for name in _INT_OPTIONS:
        if name in options and not _is_int(options[name]):
            raise Junk("invalid_options", f"option {name} must be an integer, not {options[name]!r:.80}")
    for name in _OPTIONAL_INT_OPTIONS:
        if options.get(name) is not None and not _is_int(options[name]):
            raise Junk("invalid_options", f"option {name} must be an integer or null, not {options[name]!r:.80}")
    for name in _NUMBER_OPTIONS:
        if name in options and options[name] is not None and not _is_number(options[name]):
            raise Junk("invalid_options", f"option {name} must be a finite number, not {options[name]!r:.80}")
    for name in _STR_OPTIONS:
        if name in options and options[name] is not None and not isinstance(options[name], str):
            raise Junk("invalid_options", f"option {name} must be a string, not {options[name]!r:.80}")
    if message.actor_name != CARRIER_ACTOR and message.actor_name not in broker.actors:
        raise Junk("unknown_actor", f"no actor named {message.actor_name!r} is declared by this worker")


def _now() -> datetime:
    return datetime.now(UTC)


def letter_for(queue_name: str, message: Message, junk: Junk) -> DeadLetter:
    """The dead letter of a decoded message that cannot run: what could be read of it, kept."""
    options = message.options if isinstance(message.options, dict) else {"options": message.options}
    args = list(message.args) if isinstance(message.args, list | tuple) else [message.args]
    kwargs = dict(message.kwargs) if isinstance(message.kwargs, dict) else {"kwargs": message.kwargs}
    message_id = message.message_id
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID_LENGTH:
        # Letters are unique per (message id, attempts): an id that is no id (null, "", 0) would
        # make every such message after the first look like a redelivery of it. The broker's id
        # for the delivery stays the same on a redelivery; without one, a fresh id.
        options = {**options, "original_message_id": repr(message_id)[:200]}
        redis_id = options.get("redis_message_id")
        message_id = f"redis:{redis_id}" if isinstance(redis_id, str) else f"junk:{uuid.uuid4()}"
    return bounded_letter(DeadLetter(
        id=str(uuid.uuid4()),
        message_id=message_id,
        actor=str(message.actor_name),
        queue=q_name(queue_name),
        args=args,
        kwargs=kwargs,
        options={k: v for k, v in options.items() if k not in TRANSIENT_OPTIONS},
        error_type=f"{__name__}.{type(junk).__qualname__}",
        error=str(junk),
        traceback="",
        reason=junk.reason,
        attempts=0,
        enqueued_at=enqueued_at(message.message_timestamp),
        failed_at=_now(),
        correlation_id=options.get("correlation_id") if isinstance(options.get("correlation_id"), str) else None,
    ))


def undecodable_letter(queue_name: str, body: bytes, broker_message_id: str | None,
                       error: BaseException) -> DeadLetter:
    """The dead letter of a body that is not a message: its raw bytes (at most RAW_BODY_LIMIT,
    base64), the broker's id for it, the queue, and the decode error."""
    raw = bytes(body or b"")
    return bounded_letter(DeadLetter(
        id=str(uuid.uuid4()),
        message_id=str(broker_message_id or uuid.uuid4()),
        actor="",
        queue=q_name(queue_name),
        args=[],
        kwargs={},
        options={"raw_body_base64": base64.b64encode(raw[:RAW_BODY_LIMIT]).decode(),
                 "raw_body_bytes": len(raw), "broker_message_id": broker_message_id},
        error_type=f"{type(error).__module__}.{type(error).__qualname__}",
        error=f"undecodable body ({len(raw)} bytes): {error}",
        traceback="".join(traceback.format_exception_only(type(error), error)),
        reason="undecodable",
        attempts=0,
        enqueued_at=_now(),
        failed_at=_now(),
    ))


_FIELDS = {field.name for field in dataclasses.fields(Message)}


def decode(queue_name: str, body: bytes, broker_message_id: str | None = None) -> Message:
    """A body as a Message, as Dramatiq's Message.decode reads it, except that it never raises:
    a body that is not a message becomes a carrier of its ``undecodable`` letter, and arguments
    that are not a list stay as they are (Dramatiq would turn a string into its characters and a
    dict into its keys, and run that) for ``check`` to refuse."""
    try:
        fields = get_encoder().decode(body)
        if not isinstance(fields, dict):
            raise TypeError(f"a message is a JSON object, not {type(fields).__name__}")
        if isinstance(fields.get("args"), list):
            return Message(**fields)
        missing = {"queue_name", "actor_name", "args", "kwargs", "options"} - set(fields)
        unknown = set(fields) - _FIELDS
        if missing or unknown:
            raise TypeError(f"missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
        message = object.__new__(Message)  # as it came: __post_init__ would make a tuple of it
        for name in _FIELDS:
            if name in fields:
                object.__setattr__(message, name, fields[name])
        if "message_id" not in fields or "message_timestamp" not in fields:
            raise TypeError("missing message_id or message_timestamp")
        return message
    except Exception as exc:
        letter = undecodable_letter(queue_name, body, broker_message_id, exc)
        return carrier(queue_name, letter)


def carrier(queue_name: str, letter: DeadLetter, *, message_id: str | None = None,
            options: dict[str, Any] | None = None) -> Message:
    """A message that only carries ``letter`` to the dead-letter store, on ``queue_name``."""
    return Message(queue_name=queue_name, actor_name=CARRIER_ACTOR, args=(), kwargs={},
                   options={**(options or {}), "dead_letter": letter.asdict()},
                   message_id=message_id or str(uuid.uuid4()), message_timestamp=int(time.time() * 1000))


def admit(broker: Broker, queue_name: str, proxy: Any) -> Any:
    """The delivery ``proxy`` (a consumer's MessageProxy) as the worker may handle it: its message
    put on ``queue_name`` if it named another queue, or replaced by a carrier of its dead letter.
    Returns the same proxy."""
    message: Message = proxy._message
    try:
        check(broker, message)
        if message.actor_name == CARRIER_ACTOR and "dead_letter" not in message.options:
            raise Junk("invalid_message", f"{CARRIER_ACTOR} is reserved for atelier's dead-letter carriers")
    except Junk as junk:
        letter = letter_for(queue_name, message, junk)
        keep = {}
        if isinstance(message.options, dict) and isinstance(message.options.get("redis_message_id"), str):
            keep["redis_message_id"] = message.options["redis_message_id"]  # how Redis acks it
        message_id = message.message_id if isinstance(message.message_id, str) and \
            0 < len(message.message_id) <= MAX_ID_LENGTH else None
        proxy._message = carrier(queue_name, letter, message_id=message_id, options=keep)
        return proxy
    if message.queue_name != queue_name:
        proxy._message = dataclasses.replace(message, queue_name=queue_name)
    options = message.options
    forged = _FORGED.intersection(options)
    if forged:  # what only this worker's middleware writes, as it decides a failure
        for name in forged:
            del options[name]
    eta = options.get("eta")
    if eta is not None and eta - time.time() * 1000 > MAX_DELAY_MS:
        # Dramatiq holds a delayed delivery unacked until its eta; past RabbitMQ's consumer_timeout
        # the channel is closed and all it held is delivered again. A producer's longer delay is
        # held one park, then parked again until due (ClassifiedRetries reads not_before).
        options["not_before"] = max(eta, options.get("not_before") or 0)
        options["eta"] = int(time.time() * 1000) + MAX_DELAY_MS
    return proxy
