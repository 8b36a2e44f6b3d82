"""Dramatiq actors. `dramatiq actors` imports this package: it configures logging and tracing (the
standard OTEL_* variables: docs/tracing.md), takes the process's broker from the composition root
(bootstrap.get_broker: BROKER_URL) and imports every actor module so the worker finds them all.

Producers do the same: ``import actors; actors.media.process_image.send(image_id)``. A producer
that set up OpenTelemetry itself does it before this import; its spans then continue in the workers.
"""

from bootstrap import get_broker
from bootstrap.logging import configure_logging
from bootstrap.settings import get_settings
from bootstrap.tracing import configure_tracing

settings = get_settings()
configure_logging(settings)
configure_tracing()  # before the broker: its stack has the Tracing middleware only when tracing is on
broker = get_broker()

# The broker must exist before actors are declared.
from actors import fallback, media, messaging, outbox, uploads  # noqa: E402

if settings.broker_kind == "rabbitmq":
    from bootstrap.broker import check_consumer_timeout

    check_consumer_timeout(broker, settings)  # every actor fits RabbitMQ's consumer_timeout

__all__ = ["broker", "fallback", "media", "messaging", "outbox", "settings", "uploads"]
