"""Messaging use cases: record outbound chat messages, fan them out per channel, send each delivery.

- create: idempotent on the message id (a producer may supply it): the same request again is a
  no-op returning the stored message; the id reused for a different message is refused.
  Records ``message.created`` in the same transaction (the outbox routes it to route_message).
- route: plans one delivery per channel (``all`` -> whatsapp and instagram) and returns the
  channels still to send; the actor sends deliver_message for each.
- deliver: sends one delivery through its channel's gateway. Idempotent: a delivery that is SENT,
  DELIVERED or FAILED is never sent again; a run finding another run's lease unexpired raises
  DeliveryInFlight instead of sending in parallel. Every attempt is counted. Paced: before the
  attempt, the pacer must give a slot within the channel's send rate and pair rate, else Paced
  (the message waits; no attempt is counted). A RateLimited answer holds its scope in the pacer.
- record_report: a channel's status report (delivered, read, failed) for a delivery, found by the
  channel's message id; reports never move a delivery backwards (ChannelDelivery.apply_report).
- sweep_stale: routes again deliveries left PENDING with nothing sending them (their message was
  lost: a circuit's fallback list lives in Redis, which a flush or a failover to a lagging
  replica empties), from the database of record. Safe to route a delivery twice: deliver sends
  it once. A delivery being sent (live lease) is never touched; one whose last attempt has an
  unknown outcome (lease expired, nothing recorded: the channel may have accepted it and the
  receipt be riding on a retry) waits for the much longer ``unknown_for``.

Every delivery status change commits with a ``message.status`` event (uow.add_event).

What "sent once" means: a delivery is marked SENT in the transaction after the channel accepted
it, and a SENT delivery is never sent again, whatever the broker redelivers. When that transaction
cannot commit (the database of record is down), deliver raises SendNotRecorded carrying the
channel's receipt; the actor puts it on the message, so the retry (or a replay of its dead letter)
calls deliver(..., sent=receipt), which records it and never calls the channel again. One window
stays: the channel accepted a request whose answer never reached us (timeout, connection reset
after the request went out, or a crash of the process before SENT committed). The retry then sends
again, with the same idempotency key; a channel that deduplicates on it (the mock channels do)
shows it once, one that does not may show it twice. That is at-least-once, narrowed to that window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from domain.clock import SystemClock
from domain.errors import (
    DeliveryInFlight,
    InvalidPayload,
    NotFound,
    Paced,
    PermanentError,
    RateLimited,
    SendNotRecorded,
)
from domain.models import (
    ChannelDelivery,
    DomainEvent,
    MessageChannel,
    MessageStatus,
    MessageTemplate,
    OutboundMessage,
    ReportedStatus,
    SendReceipt,
    new_id,
    parse_id,
)
from domain.ports import ChannelGateway, Clock, MessagingUnitOfWork, Pacer

log = logging.getLogger(__name__)

MAX_TEXT_LENGTH = 4096  # WhatsApp's limit for a text body
MAX_FIELD_LENGTH = 255


def parse_channel(value: Any, *, concrete: bool = False) -> MessageChannel:
    try:
        channel = MessageChannel(str(value).lower())
    except ValueError:
        raise InvalidPayload(f"channel must be one of whatsapp, instagram, all; got {value!r}") from None
    if concrete and channel is MessageChannel.ALL:
        raise InvalidPayload("a delivery is on one channel: whatsapp or instagram, not all")
    return channel


def idempotency_key(message_id: str, channel: MessageChannel) -> str:
    """The same for every attempt of one delivery."""
    return f"{message_id}:{channel.value}"


def _text_field(value: Any, name: str, *, required: bool = False, limit: int = MAX_FIELD_LENGTH) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidPayload(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise InvalidPayload(f"{name} is required")
    if len(value) > limit:
        raise InvalidPayload(f"{name} is longer than {limit} characters")
    return value or None


class MessagingService:
    def __init__(
        self,
        uow: Callable[[], MessagingUnitOfWork],
        gateways: Mapping[MessageChannel, ChannelGateway],
        *,
        lease_seconds: float = 60.0,
        clock: Clock | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._uow = uow
        self._gateways = gateways
        self._lease = timedelta(seconds=lease_seconds)
        self._clock = clock or SystemClock()
        self._pacer = pacer

    # Producer side.

    def create(
        self,
        *,
        channel: str,
        recipient: str,
        text: str | None = None,
        media_url: str | None = None,
        sender: str | None = None,
        conversation_id: str | None = None,
        message_id: str | None = None,
        template: Mapping[str, Any] | MessageTemplate | None = None,
    ) -> tuple[OutboundMessage, bool]:
        """Record a message PENDING with a ``message.created`` event. Returns (message, created):
        created is False when this id was already recorded with the same content. A message is a
        text, an image (media_url) or a WhatsApp template ({"name", "language", "components"})."""
        text = _text_field(text, "text", limit=MAX_TEXT_LENGTH)
        media_url = _text_field(media_url, "media_url", limit=2048)
        parsed_template = MessageTemplate.parse(dict(template) if isinstance(template, Mapping) else template) \
            if template is not None else None
        if sum(x is not None for x in (text, media_url, parsed_template)) != 1:
            raise InvalidPayload("give either text, media_url or template (exactly one)")
        if media_url is not None and not media_url.startswith(("https://", "http://")):
            raise InvalidPayload("media_url must be an http(s) URL")
        if parsed_template is not None and parse_channel(channel) is not MessageChannel.WHATSAPP:
            raise InvalidPayload("templates are WhatsApp's: send a template on channel whatsapp")
        now = self._clock.now()
        message = OutboundMessage(
            id=parse_id(message_id, "message id") if message_id is not None else new_id(),
            channel=parse_channel(channel),
            recipient=_text_field(recipient, "recipient", required=True),  # type: ignore[arg-type]
            text=text,
            media_url=media_url,
            template=parsed_template,
            sender=_text_field(sender, "sender"),
            conversation_id=_text_field(conversation_id, "conversation_id"),
            created_at=now,
            updated_at=now,
        )
        with self._uow() as uow:
            if not uow.messages.add(message):
                existing = uow.messages.get(message.id)
                assert existing is not None
                if not existing.same_request(message):
                    raise InvalidPayload(f"message id {message.id} was already used for a different message")
                log.info("message %s already recorded: duplicate create ignored", message.id)
                return existing, False
            uow.add_event(DomainEvent("message.created", "message", message.id, {
                "message_id": message.id, "channel": message.channel.value,
                "conversation_id": message.conversation_id,
            }, occurred_at=now))
            uow.commit()
        return message, True

    def get(self, message_id: str) -> OutboundMessage:
        with self._uow() as uow:
            message = uow.messages.get(message_id)
        if message is None:
            raise NotFound(f"message {message_id} does not exist")
        return message

    # Worker side.

    def route(self, message_id: str) -> list[MessageChannel]:
        """Plan one delivery per channel; return the channels whose delivery is not final yet."""
        with self._uow() as uow:
            message = uow.messages.get_for_update(message_id)
            if message is None:
                raise NotFound(f"message {message_id} does not exist")
            if message.plan_deliveries(self._clock.now()):
                uow.messages.save(message)
                uow.commit()
        to_send = [d.channel for d in message.deliveries if not d.final]
        log.info("message %s routed: %s", message_id, ", ".join(c.value for c in to_send) or "nothing left to send")
        return to_send

    def deliver(self, message_id: str, channel: MessageChannel, *, sent: SendReceipt | None = None
                ) -> ChannelDelivery:
        """Send the delivery of ``message_id`` on ``channel`` unless it was sent already.

        ``sent``: the receipt of an earlier run whose send the channel accepted but whose record
        failed (SendNotRecorded.receipt): it is recorded, and the channel is not called again.
        The lease that run left behind does not matter then: the send is done."""
        gateway = self._gateways.get(channel)
        if gateway is None:
            raise InvalidPayload(f"no gateway for channel {channel.value!r}")
        if sent is not None:
            return self._record_receipt(message_id, channel, sent)
        with self._uow() as uow:
            now = self._clock.now()
            message = uow.messages.get_for_update(message_id)
            if message is None:
                raise NotFound(f"message {message_id} does not exist")
            if channel not in message.channels:
                raise InvalidPayload(f"message {message_id} is for {message.channel.value}, not {channel.value}")
            message.plan_deliveries(now)
            delivery = message.delivery(channel)
            assert delivery is not None
            if delivery.final:
                log.info("delivery %s/%s already %s: not sent again", message_id, channel.value,
                         delivery.status.value)
                return delivery
            if delivery.sending_until is not None and delivery.sending_until > now:
                raise DeliveryInFlight(f"delivery {message_id}/{channel.value} is being sent by another run "
                                       f"until {delivery.sending_until.isoformat()}")
            # Last before the attempt, so the slot is used by a send that goes out now.
            wait = self._pacer.acquire(channel, message.recipient, idempotency_key(message_id, channel)) \
                if self._pacer is not None else 0.0
            if wait > 0:
                raise Paced(f"delivery {message_id}/{channel.value} waits {wait:.3f} s to stay within the "
                            f"channel's rates", wait_s=wait)
            delivery.start_attempt(now, now + self._lease)
            uow.messages.save(message)
            uow.commit()

        try:
            receipt = gateway.send(message, idempotency_key(message_id, channel))
        except PermanentError as exc:
            reason = str(exc)
            self._finish(message_id, channel, lambda d, now: d.mark_failed(reason, now))
            raise
        except Exception as exc:  # TransientError, or anything unexpected: retried
            if isinstance(exc, RateLimited) and self._pacer is not None and exc.retry_after:
                # Every worker waits with this one: the channel said so.
                self._pacer.hold(channel, message.recipient if exc.scope == "recipient" else None,
                                 exc.retry_after)
            error = f"{type(exc).__name__}: {exc}"
            self._finish(message_id, channel, lambda d, now: d.attempt_failed(error, now))
            raise
        try:
            return self._finish(message_id, channel, lambda d, now: d.mark_sent(receipt.provider_message_id, now))
        except Exception as exc:
            # Sent, not recorded: the retry must record this receipt, not send again.
            raise SendNotRecorded(
                f"delivery {message_id}/{channel.value} was accepted by the channel (id "
                f"{receipt.provider_message_id}) but could not be recorded: {type(exc).__name__}: {exc}",
                receipt) from exc

    def _record_receipt(self, message_id: str, channel: MessageChannel, sent: SendReceipt) -> ChannelDelivery:
        def record(delivery: ChannelDelivery, now: Any) -> None:
            if delivery.final:
                log.info("delivery %s/%s already %s: carried receipt not needed", message_id, channel.value,
                         delivery.status.value)
            delivery.mark_sent(sent.provider_message_id, now)  # a final delivery keeps its record

        with self._uow() as uow:
            message = uow.messages.get(message_id)
        if message is None:
            raise NotFound(f"message {message_id} does not exist")
        if channel not in message.channels:
            raise InvalidPayload(f"message {message_id} is for {message.channel.value}, not {channel.value}")
        log.info("delivery %s/%s: recording the receipt of an earlier send (%s), not sending again",
                 message_id, channel.value, sent.provider_message_id)
        return self._finish(message_id, channel, record, plan=True)

    def sweep_stale(self, dispatch: Callable[[str, MessageChannel], object], *, pending_for: float,
                    unknown_for: float, limit: int = 500, max_attempts: int | None = None) -> int:
        """Route again (``dispatch(message_id, channel)``: send deliver_message) every delivery
        PENDING with nothing sending it for ``pending_for`` seconds (``unknown_for`` when its last
        attempt's outcome is unknown); mark them routed, so the next sweep waits another bound.
        Dispatched inside the transaction: if dispatching fails, nothing is marked and the next
        sweep tries again. A delivery that already made ``max_attempts`` attempts (its sends ran
        out of retries and were dead-lettered) is marked FAILED instead of routed again for ever.
        Returns how many were routed."""
        given_up: list[tuple[str, MessageChannel, int, str | None]] = []
        with self._uow() as uow:
            now = self._clock.now()
            stale = uow.messages.stale_deliveries(now=now, idle_before=now - timedelta(seconds=pending_for),
                                                  unknown_before=now - timedelta(seconds=unknown_for), limit=limit)
            if max_attempts is not None:
                kept = []
                for message_id, channel in stale:
                    message = uow.messages.get(message_id)
                    delivery = message.delivery(channel) if message is not None else None
                    if delivery is not None and delivery.attempts >= max_attempts:
                        given_up.append((message_id, channel, delivery.attempts, delivery.last_error))
                    else:
                        kept.append((message_id, channel))
                stale = kept
            for message_id, channel in stale:
                dispatch(message_id, channel)
            uow.messages.touch_deliveries(stale, now)
            uow.commit()
        for message_id, channel, attempts, last_error in given_up:
            reason = f"gave up after {attempts} attempts; the last error: {last_error or 'none recorded'}"
            self._finish(message_id, channel, lambda d, now, reason=reason: d.mark_failed(reason, now))
            log.error("sweep: delivery %s/%s %s", message_id, channel.value, reason)
        if not stale:
            return 0
        log.warning("sweep: %d delivery(ies) left PENDING with nothing sending them routed again: %s", len(stale),
                    ", ".join(f"{m}/{c.value}" for m, c in stale[:20]) + (" ..." if len(stale) > 20 else ""))
        return len(stale)

    def record_status(self, channel: MessageChannel, provider_message_id: str,
                      status: MessageStatus) -> ChannelDelivery:
        """A DELIVERED report (see record_report for the others)."""
        if status is not MessageStatus.DELIVERED:
            raise InvalidPayload(f"channels report DELIVERED, not {status.value}")
        return self.record_report(channel, provider_message_id, ReportedStatus.DELIVERED)

    def record_report(self, channel: MessageChannel, provider_message_id: str, status: ReportedStatus,
                      error: str | None = None) -> ChannelDelivery:
        """A status the channel reported (``error``: a failed report's code and title). NotFound if
        no delivery carries that channel message id (yet: the report may beat our SENT commit)."""
        with self._uow() as uow:
            message_id = uow.messages.find_by_provider_id(channel.value, provider_message_id)
            if message_id is None:
                raise NotFound(f"no {channel.value} delivery with channel message id {provider_message_id}")
        return self._finish(message_id, channel, lambda d, now: d.apply_report(status, now, error))

    def _finish(self, message_id: str, channel: MessageChannel,
                change: Callable[[ChannelDelivery, Any], object], *, plan: bool = False) -> ChannelDelivery:
        """Apply one delivery change in its own transaction, with a message.status event when
        the delivery's status moves. ``plan``: create the delivery first if it was never planned."""
        with self._uow() as uow:
            now = self._clock.now()
            message = uow.messages.get_for_update(message_id)
            if message is None:
                raise NotFound(f"message {message_id} vanished")
            if plan:
                message.plan_deliveries(now)
            delivery = message.delivery(channel)
            assert delivery is not None
            before, read_before = delivery.status, delivery.read_at
            change(delivery, now)
            message.refresh_status(now)
            uow.messages.save(message)
            if delivery.status is not before or delivery.read_at != read_before:
                uow.add_event(DomainEvent("message.status", "message", message_id, {
                    "message_id": message_id, "channel": channel.value, "status": delivery.status.value,
                    "message_status": message.status.value, "attempts": delivery.attempts,
                    "provider_message_id": delivery.provider_message_id, "error": delivery.last_error,
                    "conversation_id": message.conversation_id,
                    "read_at": delivery.read_at.isoformat() if delivery.read_at else None,
                }, occurred_at=now))
            uow.commit()
        log.info("delivery %s/%s %s after %d attempt(s)", message_id, channel.value, delivery.status.value,
                 delivery.attempts)
        return delivery


__all__ = ["MessageStatus", "MessagingService", "idempotency_key", "parse_channel"]
