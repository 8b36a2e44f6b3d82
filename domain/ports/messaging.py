"""Chat messaging: the message repository and the channel gateways."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from domain.models import MessageChannel, OutboundMessage, SendReceipt
from domain.ports.common import UnitOfWork


class MessageRepository(Protocol):
    """Outbound messages with their per-channel deliveries, inside a unit of work."""

    def add(self, message: OutboundMessage) -> bool:
        """Insert the message (deliveries included); False, changing nothing, if its id exists."""
        ...

    def get(self, message_id: str) -> OutboundMessage | None: ...

    def get_for_update(self, message_id: str) -> OutboundMessage | None:
        """Load and lock the message row until the transaction ends (deliveries of one message
        are then updated one transaction at a time)."""
        ...

    def save(self, message: OutboundMessage) -> None:
        """Store the message's status and every delivery (inserting new ones)."""
        ...

    def find_by_provider_id(self, channel: str, provider_message_id: str) -> str | None:
        """The id of the message whose delivery on ``channel`` the channel calls this."""
        ...

    def stale_deliveries(self, *, now: datetime, idle_before: datetime, unknown_before: datetime,
                         limit: int) -> list[tuple[str, MessageChannel]]:
        """(message id, channel) of PENDING deliveries that nothing is sending: no lease and not
        changed since ``idle_before``, or a lease expired with no outcome recorded and not changed
        since ``unknown_before``. Never one whose lease runs past ``now``. The rows stay locked
        until the transaction ends; rows another transaction holds are skipped."""
        ...

    def touch_deliveries(self, keys: list[tuple[str, MessageChannel]], now: datetime) -> None:
        """Set the deliveries' updated_at to ``now`` (routed again: not stale for another bound)."""
        ...


class MessagingUnitOfWork(UnitOfWork, Protocol):
    messages: MessageRepository


class ChannelGateway(Protocol):
    """Sends one message on one chat channel.

    Raises RateLimited (a TransientError with ``scope`` and ``retry_after``) when the channel
    refused the send for one of its rate limits, TransientError when retrying may help (a
    temporary error of the channel, timeout, connection error), PermanentError when it cannot
    (authentication, permission, parameter, policy, the 24-hour window), each with the channel's
    code and title in its message. ``idempotency_key`` is the same for every attempt of one
    delivery, for channels that dedup.
    """

    def send(self, message: OutboundMessage, idempotency_key: str) -> SendReceipt: ...


class Pacer(Protocol):
    """Keeps the sends of every worker within a channel's rates: the business number's send rate
    and the pair rate (messages to one recipient), with state shared by all workers."""

    def acquire(self, channel: MessageChannel, recipient: str, token: str) -> float:
        """Take a send slot now for ``recipient`` on ``channel``: 0.0 when taken (send now), else
        the seconds to wait before asking again (nothing taken). ``token`` names the delivery, the
        same every time it asks: a delivery told to wait keeps its place in line."""
        ...

    def hold(self, channel: MessageChannel, recipient: str | None, seconds: float) -> None:
        """The channel asked us to wait (it answered a rate limit): no slot for ``recipient`` (or,
        with None, for anyone on ``channel``) during ``seconds``."""
        ...
