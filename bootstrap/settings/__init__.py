"""Configuration from environment variables (pydantic-settings), one group per capability.

A bad value stops start-up with one line naming the variable: see ``load_settings``.
docs/configuration.md's table is generated from this model (scripts/config_docs.py).
"""

from __future__ import annotations

import sys
from functools import lru_cache

from pydantic import ValidationError

from bootstrap.settings.core import CoreSettings
from bootstrap.settings.jobs import JobsSettings
from bootstrap.settings.media import MediaSettings
from bootstrap.settings.messaging import MessagingSettings
from bootstrap.settings.operations import OperationsSettings
from bootstrap.settings.outbox import OutboxSettings
from bootstrap.settings.resilience import ResilienceSettings
from bootstrap.settings.uploads import UploadSettings


class ConfigError(SystemExit):
    """Raised with a one-line message naming the bad variable; exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Settings(MediaSettings, MessagingSettings, UploadSettings, OutboxSettings, ResilienceSettings,
               JobsSettings, OperationsSettings, CoreSettings):
    """Every variable atelier reads, grouped per capability (one module each beside this one).
    A capability adds a group module and one base here."""


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) and not any(
        word in name for word in ("SECRET", "PASSWORD", "TOKEN")) else ""
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"configuration error: {name}: {msg}{shown}{more}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError naming the variable on a bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a bad value prints one line to stderr and exits 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        raise
