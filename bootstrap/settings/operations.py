"""The ops server (health, readiness, metrics, dashboard) and the scheduler."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from bootstrap.settings.base import Group, empty_is_unset


class OperationsSettings(Group):
    ops_username: str | None = Field(None, description="HTTP basic auth user of the ops server (with OPS_PASSWORD).")
    ops_password: str | None = Field(None, description="HTTP basic auth password of the ops server.")
    ops_token: str | None = Field(None, min_length=16, description="Bearer token for the ops server (16+ chars).")
    ops_check_timeout_s: float = Field(2.0, gt=0, le=60,
                                       description="Each readiness check gets this long before it counts as failed.")
    rabbitmq_management_url: str | None = Field(
        None, description="Where /dashboard points with a RabbitMQ broker (default: the broker host, port 15672).")
    gc_cron: str = Field("0 2 * * *", description="collect_abandoned_uploads schedule, crontab syntax, UTC.")
    fallback_poll_interval: float = Field(10.0, gt=0, description="Seconds between drain_fallback ticks.")

    @field_validator("ops_username", "ops_password", "ops_token", "rabbitmq_management_url", mode="before")
    @classmethod
    def _operations_empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("gc_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"must be a crontab expression like '0 2 * * *' ({exc})") from None
        return value

    @model_validator(mode="after")
    def _ops_auth_pair(self) -> OperationsSettings:
        if (self.ops_username is None) != (self.ops_password is None):
            missing = "OPS_PASSWORD" if self.ops_password is None else "OPS_USERNAME"
            raise ValueError(f"{missing} must be set too: basic auth needs OPS_USERNAME and OPS_PASSWORD")
        return self
