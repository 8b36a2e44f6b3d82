"""Entities and value objects."""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.errors import InvalidPayload


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def parse_id(value: Any, what: str = "id") -> str:
    """Validate an entity id taken from a message; a bad one is a permanent error."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidPayload(f"{what} must be a UUID, got {value!r}") from None


class ImageStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Thumbnail:
    size: int  # the longest side asked for
    key: str
    width: int
    height: int
    format: str
    byte_size: int


@dataclass
class Image:
    id: str
    original_key: str
    content_type: str | None = None
    owner: str | None = None
    status: ImageStatus = ImageStatus.PENDING
    failure_reason: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def start_processing(self, now: datetime) -> None:
        self.status = ImageStatus.PROCESSING
        self.failure_reason = None
        self.updated_at = now

    def mark_ready(self, thumbnails: list[Thumbnail], metadata: dict[str, Any], now: datetime) -> None:
        self.thumbnails = sorted(thumbnails, key=lambda t: t.size)
        self.metadata = metadata
        self.status = ImageStatus.READY
        self.failure_reason = None
        self.updated_at = now

    def mark_failed(self, reason: str, now: datetime) -> None:
        self.status = ImageStatus.FAILED
        self.failure_reason = reason[:2000]
        self.updated_at = now


@dataclass(frozen=True)
class RenderedThumbnail:
    size: int
    data: bytes
    width: int
    height: int
    format: str  # "webp" or "jpeg"

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


@dataclass(frozen=True)
class RenderedImage:
    """What the imaging port makes of an original: thumbnails and metadata."""

    thumbnails: list[RenderedThumbnail]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DomainEvent:
    """A fact a service records in the same transaction as the state change that caused it.

    The outbox relay later sends it to the actors subscribed to its type.
    """

    type: str  # e.g. "image.processed"
    aggregate_type: str  # e.g. "image"
    aggregate_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    occurred_at: datetime = field(default_factory=utcnow)


@dataclass
class OutboxEvent:
    """A recorded DomainEvent as the outbox holds it, with its delivery state."""

    id: str
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    correlation_id: str | None
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None
    published_at: datetime | None = None
    last_error: str | None = None
    dead: bool = False
    #: The W3C trace context (traceparent, tracestate, baggage) of the work that recorded the
    #: event, if it was traced: the relay sends the event's messages in that trace.
    trace_context: dict[str, str] | None = None

    def message(self) -> dict[str, Any]:
        """What subscribers receive: the event as plain JSON-able data."""
        return {
            "id": self.id,
            "type": self.type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Delivery:
    """One outbox event bound for one subscriber actor.

    dedup_key is the same every time the pair is sent, so a resend after a crash between
    enqueue and commit is recognised by the dedup middleware and not run twice.
    """

    event: OutboxEvent
    actor: str
    args: tuple[Any, ...]

    @property
    def dedup_key(self) -> str:
        return f"{self.event.id}:{self.actor}"


# --- uploads ---
class UploadStatus(enum.StrEnum):
    UPLOADING = "UPLOADING"
    MERGING = "MERGING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Chunk:
    """One uploaded piece of an upload, stored as its own object until the merge."""

    upload_id: str
    index: int  # 0-based
    size: int
    key: str
    etag: str | None = None


@dataclass
class Upload:
    """A file that arrives in chunks and is merged into one object.

    Status goes UPLOADING -> MERGING -> COMPLETED | FAILED; an upload left UPLOADING past the
    retention period is collected (FAILED, reason "abandoned").
    """

    id: str
    filename: str
    total_chunks: int
    content_type: str | None = None
    owner: str | None = None
    expected_size: int | None = None
    expected_sha256: str | None = None
    status: UploadStatus = UploadStatus.UPLOADING
    failure_reason: str | None = None
    final_key: str | None = None
    size: int | None = None  # of the merged object
    sha256: str | None = None  # of the merged object, when it was computed
    image_id: str | None = None  # the image registered from it, for an image upload
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    completed_at: datetime | None = None

    def start_merging(self, now: datetime) -> None:
        self.status = UploadStatus.MERGING
        self.updated_at = now

    def mark_completed(self, *, key: str, size: int, sha256: str | None, now: datetime) -> None:
        self.status = UploadStatus.COMPLETED
        self.failure_reason = None
        self.final_key = key
        self.size = size
        self.sha256 = sha256
        self.updated_at = now
        self.completed_at = now

    def mark_failed(self, reason: str, now: datetime) -> None:
        self.status = UploadStatus.FAILED
        self.failure_reason = reason[:2000]
        self.updated_at = now

    @property
    def is_image(self) -> bool:
        return (self.content_type or "").lower().startswith("image/")


# --- messaging ---
class MessageChannel(enum.StrEnum):
    WHATSAPP = "whatsapp"
    INSTAGRAM = "instagram"
    ALL = "all"  # fans out to every concrete channel, one delivery each


#: The channels a message can actually be sent on, in fan-out order.
CONCRETE_CHANNELS: tuple[MessageChannel, ...] = (MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM)


class MessageStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class ReportedStatus(enum.StrEnum):
    """What a channel's status webhook says of a message it accepted (WhatsApp's ``statuses``)."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


#: WhatsApp template names: lower-case letters, digits and underscores (Meta's rule), at most 512.
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
#: Template language codes as Meta lists them: ``en``, ``en_US``, ``zh_HK``, ``es_419``...
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Za-z0-9]{2,4})?$")
_COMPONENT_TYPE = re.compile(r"^[a-z_]{1,32}$")
MAX_TEMPLATE_JSON = 16_384


@dataclass(frozen=True)
class MessageTemplate:
    """A WhatsApp message template (approved by Meta beforehand) with this send's parameters:
    ``components`` as the Cloud API takes them, e.g. ``[{"type": "body", "parameters": [{"type":
    "text", "text": "Ana"}]}]``. Templates are how a business writes first, or after the 24-hour
    customer-service window closed."""

    name: str
    language: str
    components: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "language": self.language, "components": self.components}

    @classmethod
    def parse(cls, value: Any) -> MessageTemplate:
        """A template from a producer's mapping ({"name", "language", "components"}); anything that
        cannot be one is InvalidPayload, naming what is wrong."""
        if isinstance(value, MessageTemplate):
            value = value.as_dict()
        if not isinstance(value, dict):
            raise InvalidPayload("template must be an object with name, language and components")
        unknown = set(value) - {"name", "language", "components"}
        if unknown:
            raise InvalidPayload(f"template has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        name, language = value.get("name"), value.get("language") or "en_US"
        if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
            raise InvalidPayload("template name must be lower-case letters, digits and underscores (1-512)")
        if not isinstance(language, str) or not _LANGUAGE.match(language):
            raise InvalidPayload(f"template language must be a code such as en or en_US, got {language!r}")
        components = value.get("components") or []
        if not isinstance(components, list) or len(components) > 10:
            raise InvalidPayload("template components must be a list of at most 10 objects")
        for i, component in enumerate(components):
            if not isinstance(component, dict) or not isinstance(component.get("type"), str) \
                    or not _COMPONENT_TYPE.match(component["type"]):
                raise InvalidPayload(f"template component {i} must be an object with a type (header, body, button)")
            parameters = component.get("parameters", [])
            if not isinstance(parameters, list) or len(parameters) > 100 or not all(
                    isinstance(p, dict) and isinstance(p.get("type"), str) for p in parameters):
                raise InvalidPayload(f"template component {i}: parameters must be a list of objects with a type")
        try:
            size = len(json.dumps(components, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            raise InvalidPayload("template components must be plain JSON") from None
        if size > MAX_TEMPLATE_JSON:
            raise InvalidPayload(f"template components are longer than {MAX_TEMPLATE_JSON} characters of JSON")
        return cls(name, language, components)


#: A delivery in one of these is never sent again.
FINAL_DELIVERY_STATUSES = frozenset({MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.FAILED})
_PROGRESS = {MessageStatus.PENDING: 0, MessageStatus.SENT: 1, MessageStatus.DELIVERED: 2}


def _reason(error: str) -> str:
    """A failure's text as stored: a channel's answer may carry a NUL or a lone surrogate (a proxy's
    binary error page, junk details), which PostgreSQL refuses, so the outcome could never be recorded."""
    return error.replace("\x00", "\ufffd").encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


@dataclass
class ChannelDelivery:
    """One outbound message on one channel (named so as not to clash with the outbox's Delivery).

    ``sending_until`` is a lease: set before the channel is called, cleared when the outcome is
    recorded, so a duplicate run of the same delivery waits instead of sending twice.
    """

    message_id: str
    channel: MessageChannel
    status: MessageStatus = MessageStatus.PENDING
    attempts: int = 0
    provider_message_id: str | None = None
    last_error: str | None = None
    sending_until: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    updated_at: datetime = field(default_factory=utcnow)
    read_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_DELIVERY_STATUSES

    def start_attempt(self, now: datetime, lease_until: datetime) -> None:
        self.attempts += 1
        self.sending_until = lease_until
        self.updated_at = now

    def attempt_failed(self, error: str, now: datetime) -> None:
        """A transient failure: stays PENDING for the retry, lease released."""
        if self.final:  # another run finished it meanwhile
            return
        self.last_error = _reason(error)
        self.sending_until = None
        self.updated_at = now

    def mark_sent(self, provider_message_id: str | None, now: datetime) -> None:
        if self.final:  # another run finished it meanwhile; its record stands
            return
        self.status = MessageStatus.SENT
        self.provider_message_id = provider_message_id
        self.last_error = None
        self.sending_until = None
        self.sent_at = now
        self.updated_at = now

    def mark_failed(self, error: str, now: datetime) -> None:
        if self.final:
            return
        self.status = MessageStatus.FAILED
        self.last_error = _reason(error)
        self.sending_until = None
        self.updated_at = now

    def mark_delivered(self, now: datetime) -> bool:
        """The channel reported the message delivered; False if that changes nothing."""
        if self.status in (MessageStatus.DELIVERED, MessageStatus.FAILED):
            return False
        self.status = MessageStatus.DELIVERED
        self.sending_until = None
        self.delivered_at = now
        self.updated_at = now
        return True

    def apply_report(self, reported: ReportedStatus, now: datetime, error: str | None = None) -> bool:
        """A status webhook's report; False if it changes nothing. Reports arrive in any order and
        never move a delivery backwards: ``read`` implies delivered (a read before its delivered
        marks both); ``failed`` (the channel took the message, then could not deliver it) ends a
        delivery that is not delivered yet and is ignored after delivered or read; nothing moves
        a FAILED delivery; ``sent`` says nothing new (SENT is recorded when the channel accepts)."""
        if reported is ReportedStatus.DELIVERED:
            return self.mark_delivered(now)
        if reported is ReportedStatus.READ:
            if self.status is MessageStatus.FAILED or self.read_at is not None:
                return False
            self.mark_delivered(now)
            self.read_at = now
            self.updated_at = now
            return True
        if reported is ReportedStatus.FAILED:
            if self.status in (MessageStatus.DELIVERED, MessageStatus.FAILED):
                return False
            self.status = MessageStatus.FAILED
            self.last_error = _reason(error or "the channel reported the message failed")
            self.sending_until = None
            self.updated_at = now
            return True
        return False


@dataclass
class OutboundMessage:
    """A chat message to send on a channel (or on every channel: ``all``).

    Its status sums up its deliveries: PENDING while one is pending; FAILED when all failed;
    otherwise the least advanced of the others (SENT, then DELIVERED). Each delivery keeps its own.
    """

    id: str
    channel: MessageChannel
    recipient: str
    text: str | None = None
    media_url: str | None = None
    sender: str | None = None
    conversation_id: str | None = None
    status: MessageStatus = MessageStatus.PENDING
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    deliveries: list[ChannelDelivery] = field(default_factory=list)
    template: MessageTemplate | None = None  # WhatsApp only; exactly one of text, media_url, template

    @property
    def channels(self) -> tuple[MessageChannel, ...]:
        return CONCRETE_CHANNELS if self.channel is MessageChannel.ALL else (self.channel,)

    @property
    def attempts(self) -> int:
        return sum(d.attempts for d in self.deliveries)

    def delivery(self, channel: MessageChannel) -> ChannelDelivery | None:
        return next((d for d in self.deliveries if d.channel is channel), None)

    def plan_deliveries(self, now: datetime) -> list[ChannelDelivery]:
        """Add the deliveries the channel asks for (fan-out of ``all``); return the new ones."""
        added = []
        for channel in self.channels:
            if self.delivery(channel) is None:
                d = ChannelDelivery(self.id, channel, updated_at=now)
                self.deliveries.append(d)
                added.append(d)
        return added

    def refresh_status(self, now: datetime) -> bool:
        """Recompute the message status from its deliveries; True if it changed."""
        statuses = [d.status for d in self.deliveries]
        if not statuses or MessageStatus.PENDING in statuses:
            status = MessageStatus.PENDING
        elif all(s is MessageStatus.FAILED for s in statuses):
            status = MessageStatus.FAILED
        else:
            status = min((s for s in statuses if s is not MessageStatus.FAILED), key=_PROGRESS.__getitem__)
        if status is self.status:
            return False
        self.status = status
        self.updated_at = now
        return True

    def same_request(self, other: OutboundMessage) -> bool:
        """Whether ``other`` asks for the same thing (a producer's duplicate, not a reused id)."""
        return (self.channel, self.recipient, self.text, self.media_url, self.template, self.sender,
                self.conversation_id) == (other.channel, other.recipient, other.text, other.media_url,
                                          other.template, other.sender, other.conversation_id)


@dataclass(frozen=True)
class SendReceipt:
    """What a channel answered to an accepted message."""

    provider_message_id: str | None
# --- media: embeddings and search ---
@dataclass(frozen=True)
class SearchHit:
    """One search result: an image id and its cosine similarity to the query (higher is closer)."""

    image_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
