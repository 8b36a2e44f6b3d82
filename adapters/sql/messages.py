"""The outbound-message repository over SQLAlchemy Core, inside a unit of work's session."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapters.sql import tables as t
from adapters.sql.outbox import _aware
from domain.models import ChannelDelivery, MessageChannel, MessageStatus, MessageTemplate, OutboundMessage

_m = t.outbound_messages
_d = t.message_deliveries


def _delivery_row(d: ChannelDelivery) -> dict:
    return {
        "message_id": d.message_id, "channel": d.channel.value, "status": d.status.value, "attempts": d.attempts,
        "provider_message_id": d.provider_message_id, "last_error": d.last_error,
        "sending_until": d.sending_until, "sent_at": d.sent_at, "delivered_at": d.delivered_at,
        "updated_at": d.updated_at, "read_at": d.read_at,
    }


class SqlMessageRepository:
    def __init__(self, session: Session) -> None:
        self._s = session
        self._dialect = session.get_bind().dialect.name

    def add(self, message: OutboundMessage) -> bool:
        # ON CONFLICT DO NOTHING: two producers creating the same id at once both succeed, one row.
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        result = self._s.execute(dialect_insert(_m).values(
            id=message.id, conversation_id=message.conversation_id, sender=message.sender,
            recipient=message.recipient, channel=message.channel.value, text=message.text,
            media_url=message.media_url, status=message.status.value, created_at=message.created_at,
            updated_at=message.updated_at, template=message.template.as_dict() if message.template else None,
        ).on_conflict_do_nothing(index_elements=["id"]).returning(_m.c.id))
        if result.first() is None:  # (psycopg reports rowcount -1 here: ask for the row instead)
            return False
        if message.deliveries:
            self._s.execute(insert(_d), [_delivery_row(d) for d in message.deliveries])
        return True

    def get(self, message_id: str) -> OutboundMessage | None:
        return self._load(message_id, lock=False)

    def get_for_update(self, message_id: str) -> OutboundMessage | None:
        return self._load(message_id, lock=True)

    def save(self, message: OutboundMessage) -> None:
        self._s.execute(update(_m).where(_m.c.id == message.id).values(
            status=message.status.value, updated_at=message.updated_at))
        stored = set(self._s.scalars(select(_d.c.channel).where(_d.c.message_id == message.id)))
        for d in message.deliveries:
            row = _delivery_row(d)
            if d.channel.value in stored:
                self._s.execute(update(_d).where(_d.c.message_id == d.message_id, _d.c.channel == d.channel.value)
                                .values(**row))
            else:
                self._s.execute(insert(_d).values(**row))

    def find_by_provider_id(self, channel: str, provider_message_id: str) -> str | None:
        return self._s.scalar(select(_d.c.message_id).where(
            _d.c.channel == channel, _d.c.provider_message_id == provider_message_id).limit(1))

    def stale_deliveries(self, *, now: datetime, idle_before: datetime, unknown_before: datetime,
                         limit: int) -> list[tuple[str, MessageChannel]]:
        q = (select(_d.c.message_id, _d.c.channel)
             .where(_d.c.status == MessageStatus.PENDING.value,  # ix_message_deliveries_status
                    or_(and_(_d.c.sending_until.is_(None), _d.c.updated_at < idle_before),
                        and_(_d.c.sending_until <= now, _d.c.updated_at < unknown_before)))
             .order_by(_d.c.updated_at)
             .limit(limit))
        if self._dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)  # two sweeps never route the same delivery
        return [(r.message_id, MessageChannel(r.channel)) for r in self._s.execute(q)]

    def touch_deliveries(self, keys: list[tuple[str, MessageChannel]], now: datetime) -> None:
        if keys:
            self._s.execute(update(_d).where(tuple_(_d.c.message_id, _d.c.channel).in_(
                [(m, c.value) for m, c in keys])).values(updated_at=now))

    def _load(self, message_id: str, *, lock: bool) -> OutboundMessage | None:
        q = select(_m).where(_m.c.id == message_id)
        if lock:
            q = q.with_for_update()
        row = self._s.execute(q).first()
        if row is None:
            return None
        deliveries = [
            ChannelDelivery(
                message_id=r.message_id, channel=MessageChannel(r.channel), status=MessageStatus(r.status),
                attempts=r.attempts, provider_message_id=r.provider_message_id, last_error=r.last_error,
                sending_until=_aware(r.sending_until), sent_at=_aware(r.sent_at),
                delivered_at=_aware(r.delivered_at), updated_at=_aware(r.updated_at), read_at=_aware(r.read_at),
            )
            for r in self._s.execute(select(_d).where(_d.c.message_id == message_id))
        ]
        order = {c: i for i, c in enumerate(MessageChannel)}
        deliveries.sort(key=lambda d: order[d.channel])
        return OutboundMessage(
            id=row.id, channel=MessageChannel(row.channel), recipient=row.recipient, text=row.text,
            media_url=row.media_url, sender=row.sender, conversation_id=row.conversation_id,
            status=MessageStatus(row.status), created_at=_aware(row.created_at), updated_at=_aware(row.updated_at),
            deliveries=deliveries,
            template=MessageTemplate(row.template["name"], row.template["language"],
                                     list(row.template.get("components") or [])) if row.template else None,
        )
