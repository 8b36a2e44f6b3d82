"""Job records: what became of each message, from its enqueue to its end.

A record is a flat mapping of strings (how the JobStore keeps it); ``job_view`` turns it into the
JSON shape the ops server and the CLI both print.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any


def record_text(value: Any) -> str:
    """A value as a record keeps it, its text as JSON writes it: true, 0.5, {"trace": "abc"}."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


QUEUED = "queued"
DELAYED = "delayed"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"

STATUSES = (QUEUED, DELAYED, RUNNING, RETRYING, DONE, FAILED, SKIPPED, CANCELLED)
#: Statuses a job does not leave by itself (a replay is a new run of the same message id).
FINAL = frozenset({DONE, FAILED, SKIPPED, CANCELLED})
#: Statuses in which a cancel takes effect at once: the message has not started.
WAITING = frozenset({QUEUED, DELAYED, RETRYING})

def fold(record: dict[str, Any], current: int | None, order: int, fields: dict[str, Any]) -> int | None:
    """Apply one update (``order``, ``fields``) to ``record`` whose order is ``current`` (None: new),
    by the rules every JobStore keeps: an older update only fills what is missing; a finished status
    never goes back to waiting; a redelivery of a message that ended (its running, its skip as a
    duplicate) leaves the record as it ended (a failed one may run again: a replay). Returns the
    record's order after, or None when the update is ignored."""
    status, ended = fields.get("status"), record.get("status")
    if (status == SKIPPED and ended in (DONE, FAILED)) or (status == RUNNING and ended == DONE):
        return None
    if current is not None and order < current:
        for name, value in fields.items():
            record.setdefault(name, value)
        return current
    if status in WAITING and ended in FINAL:
        fields = {k: v for k, v in fields.items() if k != "status"}
    record.update(fields)
    return order


_TIMES = ("enqueued_at", "started_at", "finished_at", "next_attempt_at", "cancel_requested_at", "updated_at")


def _iso(millis: Any) -> str | None:
    try:
        return datetime.fromtimestamp(int(millis) / 1000, UTC).isoformat(timespec="milliseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None  # NaN and infinities are not JSON


def job_view(message_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of one job (times as ISO 8601 UTC, absent ones null)."""
    fraction = _float(record.get("progress"))
    attempts = record.get("attempts")
    view: dict[str, Any] = {
        "message_id": message_id,
        "actor": record.get("actor"),
        "queue": record.get("queue"),
        "status": record.get("status"),
        "attempts": int(attempts) if str(attempts or "").isdigit() else 0,
        "correlation_id": record.get("correlation_id"),
        "progress": None if fraction is None else {"fraction": fraction, "note": record.get("note") or ""},
        "reason": record.get("reason"),
        "error": record.get("error"),
        "dead_letter_id": record.get("dead_letter_id"),
        "cancel_requested": bool(record.get("cancel_requested_at")),
    }
    for name in _TIMES:
        if name in ("cancel_requested_at", "updated_at"):
            continue
        view[name] = _iso(record.get(name))
    # The order of the last update is its time in ms * 8 (+ a phase): middleware/jobs.py.
    order = record.get("order")
    updated = max(int(order) // 8 if str(order or "").isdigit() else 0,
                  int(record["updated_at"]) if str(record.get("updated_at") or "").isdigit() else 0)
    view["updated_at"] = _iso(updated) if updated else None
    return view


def worker_view(worker: dict[str, Any], now_ms: int, heartbeat_ms: int) -> dict[str, Any]:
    """The JSON shape of one worker process; ``alive`` while its heartbeats keep coming."""
    last_seen = int(worker.get("last_seen", 0) or 0)
    return {
        "id": worker.get("id"),
        "host": worker.get("host"),
        "pid": worker.get("pid"),
        "queues": list(worker.get("queues") or []),
        "threads": worker.get("threads"),
        "busy": worker.get("busy"),
        "started_at": _iso(worker.get("started_at")),
        "last_seen": _iso(last_seen),
        "alive": now_ms - last_seen <= 3 * heartbeat_ms,
    }
