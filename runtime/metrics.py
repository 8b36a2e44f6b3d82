"""Names of the figures the Metrics middleware writes and the ops server's collector reads: the
contract between the two, in a module both may import."""

from __future__ import annotations

import math

#: Dramatiq's own metric names and labels (dramatiq.middleware.prometheus), so its dashboards work.
MESSAGES = "dramatiq_messages_total"
ERRORS = "dramatiq_message_errors_total"
RETRIES = "dramatiq_message_retries_total"
REJECTS = "dramatiq_message_rejects_total"
DURATION = "dramatiq_message_duration_milliseconds"
SKIPPED = "atelier_messages_skipped_total"
DURATION_BUCKETS: tuple[float, ...] = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
                                       30000, 60000, 600000, 900000, math.inf)
MESSAGE_LABELS = ("queue_name", "actor_name")

Sample = tuple[str, tuple[str, ...], float]


def bucket_label(upper: float) -> str:
    return "+Inf" if upper == math.inf else repr(float(upper))


BUCKET_LABELS = tuple(bucket_label(b) for b in DURATION_BUCKETS)
