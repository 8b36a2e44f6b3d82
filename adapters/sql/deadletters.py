"""DeadLetterStore over SQLAlchemy Core: the ``dead_letters`` table, one short transaction per call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapters.sql import tables as t
from adapters.sql.outbox import _aware
from domain.resilience import DeadLetter

_d = t.dead_letters


def _letter(row) -> DeadLetter:  # type: ignore[no-untyped-def]
    return DeadLetter(
        id=row.id, message_id=row.message_id, actor=row.actor, queue=row.queue, args=list(row.args),
        kwargs=dict(row.kwargs), options=dict(row.options), error_type=row.error_type, error=row.error,
        traceback=row.traceback, reason=row.reason, attempts=row.attempts,
        enqueued_at=_aware(row.enqueued_at), failed_at=_aware(row.failed_at),  # type: ignore[arg-type]
        correlation_id=row.correlation_id, replayed_at=_aware(row.replayed_at),
        replay_message_id=row.replay_message_id,
    )


def _text(value: str, limit: int) -> str:
    # PostgreSQL text cannot hold NUL, nor UTF-8 a lone surrogate (a file name decoded with
    # surrogateescape): an error quoting such text would fail every write, and the letter would
    # never be stored. Written as the escapes Python would show.
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def _json(value: Any) -> Any:
    # Dramatiq's JSON carries NaN and Infinity; PostgreSQL's json refuses them, and a payload
    # holding one (bad input: what dead letters are for) could never be stored. Kept as the
    # strings Python's json writes ("NaN", "Infinity", "-Infinity").
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


class SqlDeadLetterStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, letter: DeadLetter) -> bool:
        values = {
            "id": letter.id, "message_id": letter.message_id, "actor": letter.actor, "queue": letter.queue,
            "args": _json(letter.args), "kwargs": _json(letter.kwargs), "options": _json(letter.options),
            "error_type": _text(letter.error_type, 255), "error": _text(letter.error, 10_000),
            "traceback": _text(letter.traceback, 50_000), "reason": letter.reason, "attempts": letter.attempts,
            # The column is for lookups; the options keep a longer id whole (replay sends that one).
            "correlation_id": letter.correlation_id[:64] if letter.correlation_id else None,
            "enqueued_at": letter.enqueued_at,
            "failed_at": letter.failed_at, "replayed_at": letter.replayed_at,
            "replay_message_id": letter.replay_message_id,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_d).values(**values))
        except IntegrityError:
            # (message_id, attempts) is unique: this failure was stored before.
            with self.engine.connect() as conn:
                if conn.execute(select(_d.c.id).where(_d.c.message_id == letter.message_id,
                                                      _d.c.attempts == letter.attempts)).first():
                    return False
            raise
        return True

    def get(self, letter_id: str) -> DeadLetter | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_d).where(_d.c.id == letter_id)).first()
        return _letter(row) if row else None

    def list(self, *, actor: str | None = None, older_than: datetime | None = None,
             newer_than: datetime | None = None, replayed: bool | None = None,
             limit: int = 100) -> list[DeadLetter]:
        q = select(_d).order_by(_d.c.failed_at.desc(), _d.c.id).limit(limit)
        if actor is not None:
            q = q.where(_d.c.actor == actor)
        if older_than is not None:
            q = q.where(_d.c.failed_at < older_than)
        if newer_than is not None:
            q = q.where(_d.c.failed_at >= newer_than)
        if replayed is not None:
            q = q.where(_d.c.replayed_at.is_not(None) if replayed else _d.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return [_letter(r) for r in conn.execute(q)]

    def mark_replayed(self, letter_id: str, at: datetime, message_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_d).where(_d.c.id == letter_id).values(replayed_at=at, replay_message_id=message_id))

    def delete(self, letter_ids: Sequence[str]) -> int:
        if not letter_ids:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(delete(_d).where(_d.c.id.in_(list(letter_ids)))).rowcount

    def count(self, *, replayed: bool | None = None) -> int:
        q = select(func.count()).select_from(_d)
        if replayed is not None:
            q = q.where(_d.c.replayed_at.is_not(None) if replayed else _d.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())
