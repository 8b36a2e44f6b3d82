"""LetterFallback: dead letters the dead-letter store kept refusing, in Redis (shared by every
worker, so an operator sees them from any host) or in memory (one process, the embedded default)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from domain.resilience import DeadLetter

log = logging.getLogger(__name__)


class RedisLetterFallback:
    """One hash, letter id -> the letter as JSON, under ``<namespace>letters``."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}letters"

    def add(self, letter: DeadLetter) -> None:
        self.client.hset(self.key, letter.id, json.dumps(letter.asdict(), default=str))

    def list(self, limit: int = 100) -> list[DeadLetter]:
        letters = []
        for letter_id, raw in self.client.hgetall(self.key).items():
            try:
                letters.append(DeadLetter.fromdict(json.loads(raw)))
            except (ValueError, TypeError, KeyError):  # one corrupt entry must not hide the others
                log.error("Unreadable entry %r in the dead-letter fallback store; left in place.", letter_id)
        return sorted(letters, key=lambda x: x.failed_at)[:limit]

    def remove(self, letter_ids: Sequence[str]) -> int:
        return int(self.client.hdel(self.key, *letter_ids)) if letter_ids else 0

    def count(self) -> int:
        return int(self.client.hlen(self.key))


class InMemoryLetterFallback:
    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}
        self._lock = threading.Lock()

    def add(self, letter: DeadLetter) -> None:
        with self._lock:
            self._letters[letter.id] = letter

    def list(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return sorted(self._letters.values(), key=lambda x: x.failed_at)[:limit]

    def remove(self, letter_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(self._letters.pop(i, None) is not None for i in letter_ids)

    def count(self) -> int:
        return len(self._letters)
