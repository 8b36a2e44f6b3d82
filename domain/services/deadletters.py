"""Dead letters: inspect, replay, purge. Replay never repeats a side effect that already happened:
the replayed message keeps the letter's dedup key (or gets "replay:<letter id>"), so the dedup
middleware runs it once however often it is replayed, and handlers are idempotent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from domain.errors import DomainError, NotFound
from domain.ports import Clock, DeadLetterStore, LetterFallback, MessageSender
from domain.resilience import TRANSIENT_OPTIONS, DeadLetter, bounded_letter

#: Options that belong to one delivery or one run of retries: a replay starts afresh without them.
NOT_REPLAYED = TRANSIENT_OPTIONS | {"retries", "replay_of"}


class AlreadyReplayed(DomainError):
    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"dead letter {letter.id} was replayed at {letter.replayed_at:%Y-%m-%dT%H:%M:%S%z} "
                         f"(message {letter.replay_message_id}); use --force to replay it again")
        self.letter = letter


#: Letters of deliveries that were never a runnable message: there is nothing to send again.
UNRUNNABLE = {"undecodable": "its body is not a message", "invalid_message": "its id, actor or timestamp is malformed",
              "invalid_options": "its options are of the wrong type"}


class CannotReplay(DomainError):
    """The letter's message cannot run as it was sent; purge it, or send a corrected message."""


class DeadLetterService:
    def __init__(self, store: DeadLetterStore, sender: MessageSender, clock: Clock,
                 replay_dedup_window: int = 86_400, fallback: LetterFallback | None = None) -> None:
        self.store = store
        self.fallback = fallback
        self.sender = sender
        self.clock = clock
        self.replay_dedup_window = replay_dedup_window

    def list(self, *, actor: str | None = None, older_than: datetime | None = None,
             newer_than: datetime | None = None, replayed: bool | None = None,
             limit: int = 100) -> list[DeadLetter]:
        return self.store.list(actor=actor, older_than=older_than, newer_than=newer_than, replayed=replayed,
                               limit=limit)

    def get(self, letter_id: str) -> DeadLetter:
        letter = self.store.get(letter_id)
        if letter is None:
            raise NotFound(f"no dead letter {letter_id}")
        return letter

    def replay_options(self, letter: DeadLetter) -> dict[str, Any]:
        options = {k: v for k, v in letter.options.items() if k not in NOT_REPLAYED}
        if letter.correlation_id and not options.get("correlation_id"):
            # The options hold the id whole; the store may keep a shortened one in its column.
            options["correlation_id"] = letter.correlation_id
        if "dedup_key" not in options:
            # An actor-derived key is derived again from the same arguments; without one, the
            # letter's id makes a replay that is sent twice run once.
            options["dedup_key"] = f"replay:{letter.id}"
            options.setdefault("dedup_window", self.replay_dedup_window)
        options["replay_of"] = letter.id
        return options

    def replay(self, letter_id: str, *, force: bool = False) -> str:
        """Enqueue the letter's message again (same arguments, same correlation id, a fresh retry
        count); returns the new message id. Sent before it is marked: a crash in between leaves the
        letter replayable, and a second replay is absorbed by the dedup key."""
        letter = self.get(letter_id)
        if letter.reason in UNRUNNABLE:
            raise CannotReplay(f"dead letter {letter.id} cannot be replayed: {UNRUNNABLE[letter.reason]} "
                               f"({letter.error[:200]}); purge it, or send a corrected message")
        if letter.reason == "unknown_actor" and not self.sender.declares(letter.actor):
            raise CannotReplay(f"dead letter {letter.id} cannot be replayed: no actor named {letter.actor!r} is "
                               "declared in this version; deploy the code that declares it, or purge the letter")
        if letter.replayed_at is not None and not force:
            raise AlreadyReplayed(letter)
        message_id = self.sender.send(letter.actor, letter.queue, letter.args, letter.kwargs,
                                      self.replay_options(letter))
        self.store.mark_replayed(letter.id, self.clock.now(), message_id)
        return message_id

    def purge(self, letter_ids: Sequence[str]) -> int:
        return self.store.delete(letter_ids)

    def waiting_in_fallback(self) -> int:
        """Letters the store refused repeatedly, kept aside (see restore)."""
        return self.fallback.count() if self.fallback is not None else 0

    def restore(self, limit: int = 1000) -> tuple[int, int]:
        """Move letters from the fallback store to the store; returns (moved, still waiting).
        A letter is removed from the fallback only once the store has it."""
        if self.fallback is None:
            return 0, 0
        moved = 0
        refused: Exception | None = None
        for letter in self.fallback.list(limit=limit):
            try:
                self.store.add(bounded_letter(letter))  # False: already there (moved before a crash)
            except Exception as exc:  # this one stays; the letters behind it are not held up by it
                refused = refused or exc
                continue
            self.fallback.remove([letter.id])
            moved += 1
        if refused is not None and moved == 0:
            raise refused  # the store took none: it is down, say why
        return moved, self.fallback.count()
