"""The container's providers, one class per capability; bootstrap/container.py composes them.

A providers class builds its capability's services as cached properties, lazily (building one
connects to nothing until it is used). It may also define, each collected over every capability:
- ``capability_metrics(self)``: MetricSpec figures /metrics reads at scrape time;
- ``capability_checks(self)``: readiness Checks for /readyz;
- ``capability_close(self)``: release what it opened.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any


def built(container: Any, name: str) -> Any:
    """The provider ``name`` if it was built, else None (closing must not build anything)."""
    return container.__dict__.get(name)


__all__ = ["built", "cached_property"]
