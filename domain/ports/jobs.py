"""Job records and worker heartbeats, kept where every process sees them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class JobStore(Protocol):
    """One record per message id (flat string fields, see domain.jobs), kept for a retention
    window; cancellation requests; worker heartbeats."""

    def write(self, updates: Sequence[tuple[str, int, dict[str, Any]]]) -> None:
        """Apply (message id, order, fields) updates (values kept as text, None ones left out).
        An update older (lower order) than what the record already holds only fills fields it
        lacks; a cancelled record keeps its status against later queued/delayed/retrying updates."""
        ...

    def get(self, message_id: str) -> dict[str, str] | None: ...

    def recent(self, limit: int, *, actor: str | None = None, status: str | None = None,
               scan: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        """Most recently updated first, among the ``scan`` most recent records."""
        ...

    def request_cancel(self, message_id: str, now_ms: int) -> str | None:
        """Ask for the message to be cancelled. Returns the status it had (None: unknown id). A
        queued, delayed or retrying record becomes cancelled at once; a running one is marked
        and told to stop; a finished one is left as it is."""
        ...

    def cancelled_since(self, since_ms: int) -> tuple[list[str], int]:
        """Message ids whose cancellation was asked at or after ``since_ms``, and the cursor to
        ask with next time."""
        ...

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_ms: int) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def workers(self) -> list[dict[str, Any]]:
        """Every worker whose last heartbeat is younger than its ttl."""
        ...
