"""What every settings group shares: the model configuration and the 'empty is unset' rule."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Group(BaseSettings):
    """Base of each settings group: variables are the upper-case field names, unknown ones ignored."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")


def empty_is_unset(value: object) -> object:
    """compose passes unset variables as empty strings: they mean 'not set'."""
    return None if value == "" else value
