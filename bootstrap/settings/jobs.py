"""Job records: how long they are kept, how often the middleware writes them, worker heartbeats."""

from __future__ import annotations

from pydantic import Field

from bootstrap.settings.base import Group


class JobsSettings(Group):
    jobs_enabled: bool = Field(True, description="Keep a record per message (GET /jobs, atelier jobs) and "
                                                 "honour cancellations.")
    jobs_retention_s: int = Field(86_400, ge=60, description="Seconds a job record is kept after its last change.")
    jobs_flush_interval_s: float = Field(0.2, gt=0, le=10, description="Seconds between the middleware's batched "
                                         "writes of job records; also how soon workers learn of a cancel.")
    jobs_heartbeat_s: float = Field(5.0, gt=0, le=300, description="Seconds between worker heartbeats (GET /workers); "
                                    "a worker silent for 3 of them is shown not alive.")
