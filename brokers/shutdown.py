"""Return a stopping Redis worker's unfinished messages to their queues at once."""

from __future__ import annotations

from dramatiq import Broker, Worker
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware


class RequeueUnfinished(Middleware):
    """For the Redis broker. On SIGTERM Dramatiq's worker stops taking messages, lets running ones
    finish for up to --worker-shutdown-timeout and requeues the prefetched ones it holds. A message
    still running when the timeout ends (or prefetched by a consumer but not yet handed out) stays
    in this process's Redis ack set; Redis gives it back only after the heartbeat timeout, when some
    other worker happens to run queue maintenance. This middleware moves every message still in
    this process's ack sets back to its queue when the worker has shut down, through the broker's
    own requeue command. RabbitMQ needs nothing: closing the connection requeues unacked messages.

    A message whose actor was still running is therefore run again (at least once, as every
    message is). Takes no parameters.
    """

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        client = broker.client  # type: ignore[attr-defined]
        prefix = f"{broker.namespace}:__acks__.{broker.broker_id}."  # type: ignore[attr-defined]
        for queue_name in sorted(broker.get_declared_queues() | broker.get_declared_delay_queues()):
            try:
                message_ids = client.smembers(prefix + queue_name)
                if message_ids:
                    broker.do_requeue(queue_name, *message_ids)  # type: ignore[attr-defined]
                    self.logger.warning("Returned %d unfinished message(s) to queue %r.", len(message_ids),
                                        queue_name)
            except Exception:  # the heartbeat timeout still recovers them, later
                self.logger.warning("Could not requeue unfinished messages of %r.", queue_name, exc_info=True)
