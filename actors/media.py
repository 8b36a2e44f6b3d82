"""Media actors: thin wrappers around MediaService."""

import dramatiq
import structlog

from actors import settings
from bootstrap import get_container, queue
from domain.models import parse_id


@dramatiq.actor(queue_name=queue(settings, "media"), time_limit=300_000)
def process_image(image_id: str) -> None:
    image_id = parse_id(image_id, "image_id")
    structlog.contextvars.bind_contextvars(image_id=image_id)
    get_container().media.process_image(image_id)


# --- media: embeddings ---
# Sent by the outbox relay on image.processed (bootstrap/routing.py) and by `atelier reindex`.
# ModelUnavailable / IndexUnavailable are transient: retried with backoff, then dead-lettered.
@dramatiq.actor(queue_name=queue(settings, "embeddings"), time_limit=300_000, max_retries=8,
                min_backoff=5_000, max_backoff=600_000)
def embed_image(image_id: str) -> None:
    image_id = parse_id(image_id, "image_id")
    structlog.contextvars.bind_contextvars(image_id=image_id)
    get_container().embeddings.embed_image(image_id)
