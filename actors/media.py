"""Media actors: thin wrappers around MediaService."""

import dramatiq
import structlog

from actors import settings
from adapters.bootstrap import get_container
from adapters.broker import queue
from domain.models import parse_id


@dramatiq.actor(queue_name=queue(settings, "media"), time_limit=300_000)
def process_image(image_id: str) -> None:
    image_id = parse_id(image_id, "image_id")
    structlog.contextvars.bind_contextvars(image_id=image_id)
    get_container().media.process_image(image_id)
