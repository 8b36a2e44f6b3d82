"""MessageSender on a Dramatiq broker: parked messages back to their queues, replayed dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dramatiq import Broker, Message
from dramatiq.errors import ActorNotFound

from brokers.park import fresh_copy


class BrokerSender:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def requeue(self, item: bytes) -> None:
        """An encoded message (a fallback queue's item) back onto its own queue, same id and options."""
        self.broker.enqueue(fresh_copy(Message.decode(item)))

    def send(self, actor: str, queue: str, args: Sequence[Any], kwargs: dict[str, Any],
             options: dict[str, Any]) -> str:
        """A new message to ``actor`` on ``queue``, through the broker's middleware. The actor need
        not be declared in this process (a CLI replaying a letter of an actor only workers load)."""
        try:
            message = self.broker.get_actor(actor).message_with_options(args=tuple(args), kwargs=kwargs, **options)
        except ActorNotFound:
            message = Message(queue_name=queue, actor_name=actor, args=tuple(args), kwargs=dict(kwargs),
                              options=dict(options))
        return self.broker.enqueue(message).message_id

    def declares(self, actor: str) -> bool:
        return actor in self.broker.actors
