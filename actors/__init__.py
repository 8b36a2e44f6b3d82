"""Dramatiq actors. `dramatiq actors` imports this package: it configures logging, takes the
process's broker from the composition root (bootstrap.get_broker: BROKER_URL) and imports every
actor module so the worker finds them all.

Producers do the same: ``import actors; actors.media.process_image.send(image_id)``.
"""

from bootstrap import get_broker
from bootstrap.logging import configure_logging
from bootstrap.settings import get_settings

settings = get_settings()
configure_logging(settings)
broker = get_broker()

# The broker must exist before actors are declared.
from actors import fallback, media, messaging, outbox, uploads  # noqa: E402

if settings.broker_kind == "rabbitmq":
    from bootstrap.broker import check_consumer_timeout

    check_consumer_timeout(broker, settings)  # every actor fits RabbitMQ's consumer_timeout

__all__ = ["broker", "fallback", "media", "messaging", "outbox", "settings", "uploads"]
