"""Dramatiq actors. `dramatiq actors` imports this package: it builds the broker from
settings (BROKER_URL) and imports every actor module so the worker finds them all.

Producers do the same: ``import actors; actors.media.process_image.send(image_id)``.
"""

from adapters.broker import setup_broker
from adapters.logging import configure_logging
from adapters.settings import get_settings

settings = get_settings()
configure_logging(settings)
broker = setup_broker(settings)

# The broker must exist before actors are declared.
from actors import fallback, media, messaging, outbox, routing, uploads  # noqa: E402

__all__ = ["broker", "fallback", "media", "messaging", "outbox", "routing", "settings", "uploads"]
