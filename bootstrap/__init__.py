"""The composition root: the one place that knows which adapter serves which port.

It builds the container of services (``get_container``), the broker with atelier's middleware
stack (``get_broker``), and holds the outbox routing table (bootstrap/routing.py) and the
settings (bootstrap/settings/). Importing it connects to nothing and imports no actor: the
actors take their broker from here, never the other way round.
"""

from bootstrap.broker import build_broker, get_broker, queue, setup_broker
from bootstrap.container import Container, get_container, set_container

__all__ = ["Container", "build_broker", "get_broker", "get_container", "queue", "set_container", "setup_broker"]
