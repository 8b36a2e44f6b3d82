"""The container: every capability's providers in one object, built once per process on first use.

Importing this module connects to nothing; each service is built lazily the first time it is
asked for. A new capability adds a providers class (bootstrap/providers/) and one base here.
"""

from __future__ import annotations

import threading

from bootstrap.providers.core import CoreProviders
from bootstrap.providers.jobs import JobsProviders
from bootstrap.providers.media import MediaProviders
from bootstrap.providers.messaging import MessagingProviders
from bootstrap.providers.operations import OperationsProviders
from bootstrap.providers.outbox import OutboxProviders
from bootstrap.providers.resilience import ResilienceProviders
from bootstrap.providers.uploads import UploadProviders
from bootstrap.settings import Settings, get_settings


class Container(CoreProviders, OutboxProviders, UploadProviders, MessagingProviders, ResilienceProviders,
                JobsProviders, MediaProviders, OperationsProviders):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


_lock = threading.Lock()
_container: Container | None = None


def get_container() -> Container:
    global _container
    if _container is None:
        with _lock:
            if _container is None:
                _container = Container(get_settings())
    return _container


def set_container(container: Container | None) -> None:
    """Swap the process-wide container (tests, the embedded demo)."""
    global _container
    with _lock:
        _container = container
