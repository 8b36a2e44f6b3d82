"""Telling a Redis that cannot be used for now from a command that is wrong."""

from __future__ import annotations

import redis

#: Error replies with which Redis refuses commands for a while (a failover, a long script, a load,
#: memory): an ack or a requeue refused with one is tried again, as after a dropped connection.
_REFUSALS = frozenset({"READONLY", "BUSY", "LOADING", "OOM", "MISCONF", "TRYAGAIN", "MASTERDOWN", "NOREPLICAS",
                       "CLUSTERDOWN"})


def redis_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be used for now, rather than that the command is wrong."""
    # redis-py cuts the code off the text of the replies it has a class for (READONLY, OOM).
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError
                  | redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).split(" ", 1)[0] in _REFUSALS
