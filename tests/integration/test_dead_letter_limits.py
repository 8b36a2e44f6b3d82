"""Dead letters that a store would refuse as they came (ids longer than the column, counts above
INTEGER, NUL characters, lone surrogates, NaN, megabytes of arguments) are bounded so that
PostgreSQL and SQLite keep them; the fallback store keeps letters the store refused anyway."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from adapters.sql.deadletters import SqlDeadLetterStore
from adapters.sql.engine import make_engine
from adapters.sql.migrate import upgrade
from adapters.state.letters import RedisLetterFallback
from domain.clock import SystemClock
from domain.resilience import DeadLetter, bounded_letter
from domain.services.deadletters import DeadLetterService


def hostile_letter(message_id: str) -> DeadLetter:
    now = datetime.now(UTC)
    return DeadLetter(
        id=str(uuid.uuid4()), message_id=message_id, actor="a\x00" * 200, queue="q" * 300,
        args=[math.nan, math.inf, "\x00", "\ud800", "z" * 600_000, 10**40], kwargs={"\x00k": -math.inf},
        options={"retries": 2**40, "nested": [[[["\ud83d"]]]]}, error_type="E" * 300, error="boom\x00" * 5000,
        traceback="t\ud800" * 50_000, reason="invalid_arguments_and_more_than_32_chars", attempts=2**40,
        enqueued_at=now, failed_at=now, correlation_id="c" * 100)


def test_a_bounded_letter_is_kept_by_the_store_whatever_the_message_held(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        store = SqlDeadLetterStore(engine)
        first = bounded_letter(hostile_letter("m" * 1000 + "1"))
        second = bounded_letter(hostile_letter("m" * 1000 + "2"))  # same prefix: still its own letter
        assert store.add(first) and store.add(second)
        kept = store.get(first.id)
        assert kept is not None and kept.message_id == first.message_id and len(kept.message_id) == 64
        assert kept.attempts == 2**31 - 1
        assert kept.args[0]["head"].startswith('["nan","inf","","\\\\ud800","zzz')  # 600 kB: cut, the head kept
        assert kept.kwargs == {"k": "-inf"} and len(kept.error) <= 16_384
        assert store.get(second.id) is not None
    finally:
        engine.dispose()


def test_the_redis_fallback_keeps_letters_until_restore_moves_them_to_the_store(redis_ns, database_url):
    client, ns = redis_ns
    fallback = RedisLetterFallback(client, f"{ns}:deadletters:")
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        store = SqlDeadLetterStore(engine)
        letters = [hostile_letter(f"fb-{uuid.uuid4()}") for _ in range(3)]  # as the middleware kept them
        for letter in letters:
            fallback.add(bounded_letter(letter))
        client.hset(fallback.key, "corrupt", b"{not json")  # must not hide the others
        assert len(fallback.list()) == 3
        client.hdel(fallback.key, "corrupt")
        assert fallback.count() == 3
        service = DeadLetterService(store, None, SystemClock(), fallback=fallback)  # type: ignore[arg-type]
        assert service.waiting_in_fallback() == 3
        assert service.restore() == (3, 0)
        assert fallback.count() == 0
        assert {store.get(x.id).message_id for x in letters} == {x.message_id for x in letters}  # type: ignore[union-attr]
    finally:
        engine.dispose()
