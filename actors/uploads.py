"""Upload actors: thin wrappers around UploadService."""

from typing import Any

import dramatiq
import structlog

from actors import settings
from bootstrap import get_container, queue
from domain.errors import InvalidPayload
from domain.models import parse_id
from runtime.jobs import report_progress


# Merging 10 GB server side takes minutes (a composed merge moves no bytes through the worker;
# verifying reads the object once). 20 min, not more: with the 5 min margin it stays inside
# RabbitMQ's 30 min consumer_timeout (bootstrap.broker.check_consumer_timeout); a merge cut short
# is retried and merges again from the start (it is idempotent), then dead-lettered.
@dramatiq.actor(queue_name=queue(settings, "uploads"), time_limit=1_200_000)
def merge_upload(upload_id: str) -> None:
    upload_id = parse_id(upload_id, "upload_id")
    structlog.contextvars.bind_contextvars(upload_id=upload_id)
    get_container().uploads.merge_upload(upload_id, progress=report_progress)  # per part; cancellable there


# Sent by the scheduler (GC_CRON) and runnable by hand (`atelier gc`); safe to run twice at once.
# It commits a batch at a time: a run cut short by its 20 min limit leaves the rest to the retry.
@dramatiq.actor(queue_name=queue(settings, "uploads"), time_limit=1_200_000, max_retries=3)
def collect_abandoned_uploads() -> None:
    get_container().uploads.collect_abandoned()


# No longer routed: image.uploaded -> process_image (bootstrap/routing.py) covers image uploads.
# Kept declared for messages a relay of the previous version sent on upload.completed (a rolling
# deploy); process_image leaves an image already processed as it is. Other uploads: nothing to do.
@dramatiq.actor(queue_name=queue(settings, "media"), time_limit=300_000)
def process_uploaded_image(event: dict[str, Any]) -> None:
    if not isinstance(event, dict) or not isinstance(event.get("payload"), dict):
        raise InvalidPayload(f"expected an upload.completed event, got {event!r:.200}")
    image_id = event["payload"].get("image_id")
    if image_id is None:
        return
    image_id = parse_id(image_id, "image_id")
    structlog.contextvars.bind_contextvars(image_id=image_id, upload_id=event.get("aggregate_id"))
    get_container().media.process_image(image_id)
