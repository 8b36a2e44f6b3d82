"""How many messages a broker still holds for a queue (ready, in flight or delayed): what is
stuck once every effect is done and the workers are idle."""

from __future__ import annotations

import time
from urllib.parse import unquote, urlsplit


def backlog(broker_url: str, queue: str, *, ctl=None) -> int:  # type: ignore[no-untyped-def]
    """Redis: the messages hash of the queue and of its delay queue (a message leaves it when it
    is acknowledged). RabbitMQ: ready + unacknowledged of the queue and its delay queue, by
    rabbitmqctl (``ctl``: a private node's rabbitmqctl; default the shared node's)."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            return sum(client.hlen(f"dramatiq:{name}.msgs") for name in (queue, f"{queue}.DQ"))
        finally:
            client.close()
    from tests.fault.servers import rabbitmqctl

    vhost = unquote(urlsplit(broker_url).path.lstrip("/")) or "/"
    args = ("list_queues", "-p", vhost, "name", "messages")
    out = ctl(*args).stdout if ctl is not None else rabbitmqctl(*args)
    total = 0
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name in (queue, f"{queue}.DQ") and count.strip().isdigit():
            total += int(count)
    return total


def wait_empty(broker_url: str, queue: str, *, timeout: float, ctl=None) -> int:  # type: ignore[no-untyped-def]
    """Poll until the broker holds nothing for ``queue``; the backlog left at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = backlog(broker_url, queue, ctl=ctl)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)
