"""Value objects of the worker middleware: dedup outcomes, circuit-breaker policy and decisions,
and dead letters. Pure data; the state machines live in the stores (atomic on Redis)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Options that describe one delivery, not the message: dead letters do not store them and a
#: replay never sends them.
TRANSIENT_OPTIONS = frozenset({"traceback", "redis_message_id", "eta", "requeue_timestamp", "dead_letter",
                               "dead_letter_attempts", "retry_enqueue_error", "failed_because",
                               "failed_detail", "not_before"})


class DedupOutcome(enum.StrEnum):
    ACQUIRED = "acquired"  # this message may run; the key is held while it does
    DONE = "done"  # a message with this key completed within the window: skip
    BUSY = "busy"  # another message with this key is running right now: skip
    #: Another delivery of this same message holds the key (it runs elsewhere or here, or its
    #: process died and its lease has not ended): neither run beside it nor skipped as done, but
    #: put back and decided again later.
    REDELIVERY = "redelivery"


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The value exported as atelier_circuit_state: 0 closed, 1 half-open, 2 open."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


@dataclass(frozen=True)
class BreakerPolicy:
    """failure_threshold dependency failures within window_ms open the circuit; after
    reset_timeout_ms it lets half_open_trials messages through; a successful trial closes it,
    a failed one opens it again."""

    failure_threshold: int = 5
    window_ms: int = 60_000
    reset_timeout_ms: int = 30_000
    half_open_trials: int = 1


@dataclass(frozen=True)
class BreakerDecision:
    allowed: bool
    state: CircuitState
    #: When not allowed: epoch milliseconds at which the circuit may let traffic through.
    retry_at_ms: int = 0
    #: Allowed as one of the half-open trials (its outcome closes or reopens the circuit).
    trial: bool = False
    #: (from, to) when this call changed the state.
    transition: tuple[CircuitState, CircuitState] | None = None


@dataclass
class DeadLetter:
    """A message that failed for good, with everything needed to understand and replay it."""

    id: str
    message_id: str
    actor: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    error_type: str
    error: str
    traceback: str
    # permanent | retries_exhausted | retry_enqueue_failed | not_retried | expired | invalid_arguments |
    # invalid_options | invalid_message | unknown_actor | undecodable
    reason: str
    attempts: int
    enqueued_at: datetime
    failed_at: datetime
    correlation_id: str | None = None
    replayed_at: datetime | None = None
    replay_message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def asdict(self) -> dict[str, Any]:
        return {
            "id": self.id, "message_id": self.message_id, "actor": self.actor, "queue": self.queue,
            "args": self.args, "kwargs": self.kwargs, "options": self.options,
            "error_type": self.error_type, "error": self.error, "traceback": self.traceback,
            "reason": self.reason, "attempts": self.attempts, "enqueued_at": self.enqueued_at.isoformat(),
            "failed_at": self.failed_at.isoformat(), "correlation_id": self.correlation_id,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_message_id": self.replay_message_id,
        }

    @classmethod
    def fromdict(cls, data: dict[str, Any]) -> DeadLetter:
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            id=data["id"], message_id=data["message_id"], actor=data["actor"], queue=data["queue"],
            args=list(data["args"]), kwargs=dict(data["kwargs"]), options=dict(data["options"]),
            error_type=data["error_type"], error=data["error"], traceback=data["traceback"],
            reason=data["reason"], attempts=int(data["attempts"]),
            enqueued_at=when(data["enqueued_at"]),  # type: ignore[arg-type]
            failed_at=when(data["failed_at"]),  # type: ignore[arg-type]
            correlation_id=data.get("correlation_id"), replayed_at=when(data.get("replayed_at")),
            replay_message_id=data.get("replay_message_id"),
        )


#: Bounds of what a dead letter keeps, so that every store accepts every letter (column sizes,
#: INTEGER, PostgreSQL's refusal of NUL characters and of NaN in JSON).
LETTER_LIMITS = {"message_id": 64, "actor": 255, "queue": 255, "error_type": 255, "reason": 32,
                 "correlation_id": 64, "error": 16_384, "traceback": 65_536}
LETTER_JSON_LIMIT = 256 * 1024
_INT32_MAX = 2**31 - 1


def enqueued_at(timestamp: Any) -> datetime:
    """A message's ``message_timestamp`` (epoch ms) as a time; now when it is not one (a letter
    must be written whatever the message held)."""
    try:
        return datetime.fromtimestamp(int(timestamp) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _text(text: str) -> str:
    """Without NUL characters and lone surrogates (JSON can carry both; PostgreSQL takes neither)."""
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")


def _clip(text: str, limit: int) -> str:
    """``text`` without NUL characters, at most ``limit`` characters; a clipped text ends with a
    hash of the whole, so two long texts with one prefix stay apart (message ids are unique keys)."""
    text = _text(text)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:limit - 17]}~{digest}"


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON every store takes: non-finite floats and unknown objects as text, no NUL."""
    if depth > 64:
        return repr(value)[:1000]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -2**63 <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_clip(str(k), 1000): _json_safe(v, depth + 1) for k, v in value.items()}
    return repr(value)[:1000]


def _json_bounded(value: Any, limit: int, wrap: type) -> Any:
    safe = _json_safe(value)
    text = json.dumps(safe, separators=(",", ":"), ensure_ascii=False)
    if len(text) <= limit:
        return safe
    kept = {"truncated_from_chars": len(text), "head": text[:limit // 2]}
    return [kept] if wrap is list else {"_truncated": kept}


def bounded_letter(letter: DeadLetter) -> DeadLetter:
    """``letter`` as every dead-letter store can keep it: texts clipped to their columns, counts in
    INTEGER, arguments and options as finite JSON of at most LETTER_JSON_LIMIT characters."""
    clipped = {name: _clip(str(getattr(letter, name)), limit) for name, limit in LETTER_LIMITS.items()
               if getattr(letter, name) is not None}
    return dataclasses.replace(
        letter, **clipped,
        attempts=max(0, min(int(letter.attempts), _INT32_MAX)),
        args=_json_bounded(list(letter.args), LETTER_JSON_LIMIT, list),
        kwargs=_json_bounded(dict(letter.kwargs), LETTER_JSON_LIMIT, dict),
        options=_json_bounded(dict(letter.options), LETTER_JSON_LIMIT, dict),
    )


# --- dedup leases: held by one delivery of a message, not by the message ---

def lease_holder(message_id: str, delivery: str) -> str:
    """The holder of a dedup lease: one delivery of one message (``<message id>|<delivery>``,
    the delivery naming the process and a counter in it)."""
    return f"{message_id}|{delivery}"


def holder_message(holder: str) -> str:
    """The message id of a lease holder (a bare message id, as leases written before holders
    named their delivery, is its own)."""
    message_id, sep, _delivery = holder.rpartition("|")
    return message_id if sep else holder


def lease_outcome(held: str | None, holder: str) -> DedupOutcome | None:
    """What a key's current value (None: free, ``done``, or ``r:<holder>``) means to ``holder``
    trying to take it: ACQUIRED (free), DONE, REDELIVERY (another delivery of the same message),
    BUSY (another message), or None when ``holder`` itself holds it."""
    if held is None:
        return DedupOutcome.ACQUIRED
    if held == "done":
        return DedupOutcome.DONE
    if held == f"r:{holder}":
        return None
    other = held[2:] if held.startswith("r:") else held
    return DedupOutcome.REDELIVERY if holder_message(other) == holder_message(holder) else DedupOutcome.BUSY


#: A retry whose enqueue raised may still have reached the broker (a publish confirm lost with
#: the connection). Its dead letter and the retry, if it exists, claim this key: the first claim
#: wins, so exactly one of them stands (middleware/retries.py, middleware/dedup.py).
RETRY_CLAIM_RUN = "run"
RETRY_CLAIM_DEAD = "dead"
RETRY_CLAIM_RUN_TTL_MS = 3_600_000  # outlives any enqueue call that could still raise after the retry ran
RETRY_CLAIM_DEAD_TTL_MS = 7 * 86_400_000  # outlives the retry's delay, parks and any backlog


def retry_claim_key(message_id: str, retries: int) -> str:
    """The claim of attempt ``retries`` of a message (a dedup key begins with its actor's name,
    and no Python function name begins with "~")."""
    return f"~retry:{message_id}:{retries}"
