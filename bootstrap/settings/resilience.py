"""The middleware's defaults: dedup windows, circuit breakers, fallback draining, dead-letter replay."""

from __future__ import annotations

from pydantic import Field

from bootstrap.settings.base import Group
from domain.resilience import BreakerPolicy


class ResilienceSettings(Group):
    dedup_default_window: int = Field(86_400, ge=1, description="Seconds, for actors that give a key but no window.")
    dedup_lease_ttl_s: float = Field(30.0, ge=1, le=3600, description=(
        "Seconds a dedup key stays held after the worker running its message died (kill -9); renewed while it runs."))
    circuit_failure_threshold: int = Field(5, ge=1, description="Dependency failures within the window that open it.")
    circuit_window_s: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    circuit_reset_timeout_s: float = Field(30.0, gt=0, description="Open this long, then half-open.")
    circuit_half_open_trials: int = Field(1, ge=1, description="Messages let through while half-open.")
    fallback_batch_size: int = Field(50, ge=1, le=10_000, description="Parked messages one drain moves per circuit.")
    dlq_replay_dedup_window: int = Field(86_400, ge=1, description="Seconds a replayed letter's key is remembered.")

    @property
    def breaker_policy(self) -> BreakerPolicy:
        """The circuit breakers' defaults (actors may override them)."""
        return BreakerPolicy(failure_threshold=self.circuit_failure_threshold,
                             window_ms=int(self.circuit_window_s * 1000),
                             reset_timeout_ms=int(self.circuit_reset_timeout_s * 1000),
                             half_open_trials=self.circuit_half_open_trials)
