"""The running job, for actors and services that report progress.

Neutral: the Jobs middleware sets ``CURRENT_JOB`` while a message runs; code anywhere calls
``report_progress``. Outside a job (a CLI run, a test) it does nothing.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol


class JobHandle(Protocol):
    message_id: str

    def report(self, fraction: float, note: str) -> None: ...


#: The job running in this thread (or context); None between messages. Set by the Jobs middleware.
CURRENT_JOB: ContextVar[Any] = ContextVar("atelier_current_job", default=None)


def report_progress(fraction: float, note: str = "") -> None:
    """Record how far the running job is (0.0 to 1.0; clamped) with a short note. This is also
    where a running job learns it was cancelled: it raises domain.errors.Cancelled then, and the
    job ends ``cancelled`` (not failed, not retried). Call it where stopping is safe."""
    job = CURRENT_JOB.get()
    if job is not None:
        job.report(fraction, note)


def current_job_id() -> str | None:
    job = CURRENT_JOB.get()
    return None if job is None else job.message_id
