"""Follow, list and cancel jobs; list the workers. What the ops server and the CLI both call, so
their JSON is the same."""

from __future__ import annotations

from typing import Any

from domain.clock import SystemClock
from domain.jobs import STATUSES, job_view, worker_view
from domain.ports import Clock, JobStore

MAX_LIST = 1000


class JobService:
    def __init__(self, store: JobStore, clock: Clock | None = None, *, heartbeat_s: float = 5.0) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.heartbeat_ms = int(heartbeat_s * 1000)

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def show(self, message_id: str) -> dict[str, Any] | None:
        record = self.store.get(message_id)
        return None if record is None else job_view(message_id, record)

    def list(self, *, actor: str | None = None, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        limit = max(1, min(int(limit), MAX_LIST))
        return [job_view(mid, record) for mid, record in self.store.recent(limit, actor=actor or None,
                                                                           status=status or None)]

    def cancel(self, message_id: str) -> dict[str, Any] | None:
        """Ask for the job to be cancelled (idempotent). None for an unknown message id; else
        the job as it is now, with ``cancel`` saying what the request did: ``cancelled`` (it had
        not started and never will), ``requested`` (it runs and stops at its next progress
        point), or ``too_late`` (it had finished)."""
        previous = self.store.request_cancel(message_id, self._now_ms())
        if previous is None:
            return None
        view = self.show(message_id) or {"message_id": message_id}
        view["cancel"] = ("too_late" if previous in ("done", "failed", "skipped")
                          else "cancelled" if view.get("status") == "cancelled" else "requested")
        return view

    def workers(self) -> list[dict[str, Any]]:
        now = self._now_ms()
        return [worker_view(w, now, self.heartbeat_ms) for w in self.store.workers()]
