"""Ports: what the domain needs from the outside world, as typing.Protocol, one module per concern.

Business ports sit beside their capability (media, uploads, messaging, outbox); the middleware's
state ports in resilience. Everything is re-exported here: ``from domain.ports import ObjectStore``.
"""

from domain.ports.common import Clock, ObjectStore, UnitOfWork
from domain.ports.jobs import JobStore
from domain.ports.media import ImageEmbedder, ImageProcessor, ImageRepository, VectorIndex
from domain.ports.messaging import ChannelGateway, MessageRepository, MessagingUnitOfWork, Pacer
from domain.ports.outbox import EventPublisher, OutboxRepository
from domain.ports.resilience import (
    BreakerStore,
    DeadLetterStore,
    DedupStore,
    FallbackQueue,
    LetterFallback,
    MessageSender,
    MetricsStore,
)
from domain.ports.uploads import UploadRepository

__all__ = [
    "BreakerStore",
    "ChannelGateway",
    "Clock",
    "DeadLetterStore",
    "DedupStore",
    "EventPublisher",
    "FallbackQueue",
    "ImageEmbedder",
    "ImageProcessor",
    "ImageRepository",
    "JobStore",
    "LetterFallback",
    "MessageRepository",
    "MessageSender",
    "MessagingUnitOfWork",
    "MetricsStore",
    "ObjectStore",
    "OutboxRepository",
    "Pacer",
    "UnitOfWork",
    "UploadRepository",
    "VectorIndex",
]
