"""Job records, cancellations and worker heartbeats: in Redis (every process sees them), or in this
process's memory (the StubBroker, the embedded default).

Redis keys under ``atelier:<QUEUE_PREFIX>jobs:``: ``j:<message id>`` a hash per job (expires after
the retention window), ``index`` a sorted set of message ids by last update (trimmed to the
window), ``cancel`` a sorted set of message ids by when their cancellation was asked, ``workers`` a
hash of worker heartbeats (JSON).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from brokers.redis_errors import redis_outage
from domain.jobs import CANCELLED, FINAL, WAITING, fold, record_text

logger = logging.getLogger(__name__)

#: Jobs per script call. Redis runs a script alone: 300 jobs held every other client (the broker's
#: fetches and acks, the actors' own commands) for about 3 ms; 50 hold them about half a
#: millisecond, and the calls go one at a time, so other clients' commands run between them.
CHUNK = 50

# KEYS[1] index; ARGV[1] now, ARGV[2] retention ms, ARGV[3] the job hashes' key prefix, ARGV[4] the
# updates as one JSON array of [message id, order, {field: value}], the order a string, each value a
# string or an integer. One argument for the whole chunk: redis-py packs each argument in Python,
# and the hot path pays for every one. The script formats nothing: Lua's string.format of numbers
# was about a third of its time, on the cores the workers use (bench/README.md); a command given
# a number writes its digits itself, in C. The hashes' keys are made here from the
# prefix (they cannot be declared: a chunk's ids are only in ARGV[4]), which holds on a single
# Redis, the only kind atelier's state runs on.
_WRITE = r"""
local now = tonumber(ARGV[1])
local ret = tonumber(ARGV[2])
local prefix = ARGV[3]
local index = {}
for _, u in ipairs(cjson.decode(ARGV[4])) do
  local id, order, fields = u[1], tonumber(u[2]), u[3]
  local key = prefix .. id
  local cur = redis.call('HMGET', key, 'order', 'status')
  local st = cur[2]
  local status = fields.status
  -- A redelivery of a message that finished (run again, or skipped as a duplicate): the record
  -- keeps how it ended. A failed one may run again: a replay of its dead letter.
  if not ((status == 'skipped' and (st == 'done' or st == 'failed')) or (status == 'running' and st == 'done')) then
    if (not cur[1]) or order >= tonumber(cur[1]) then
      -- A finished record never goes back to waiting: the enqueue that moves a delayed message to
      -- its queue can record 'queued' after the message already ran (RabbitMQ's confirm comes back
      -- after the worker took it).
      if (status == 'queued' or status == 'delayed' or status == 'retrying') and
         (st == 'done' or st == 'failed' or st == 'skipped' or st == 'cancelled') then
        fields.status = nil
      end
      local sets = {'order', u[2]}
      for f, v in pairs(fields) do
        sets[#sets + 1] = f
        sets[#sets + 1] = v
      end
      redis.call('HSET', key, unpack(sets))
    else
      for f, v in pairs(fields) do
        redis.call('HSETNX', key, f, v)
      end
    end
  end
  redis.call('PEXPIRE', key, ret)
  index[#index + 1] = now
  index[#index + 1] = id
end
if #index > 0 then redis.call('ZADD', KEYS[1], unpack(index)) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ret)
return 1
"""

# KEYS[1] job hash, KEYS[2] cancel set; ARGV[1] message id, ARGV[2] now, ARGV[3] retention ms
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local st = redis.call('HGET', KEYS[1], 'status') or ''
if st == 'done' or st == 'failed' or st == 'skipped' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'cancel_requested_at', ARGV[2], 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
if st == 'queued' or st == 'delayed' or st == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'reason', 'cancelled before it ran')
end
return st
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms() -> int:
    return int(time.time() * 1000)


def _encode(updates: Sequence[tuple[str, int, dict[str, Any]]]) -> bytes:
    """Updates as one JSON argument, as given: the Jobs middleware gives every value as text or an
    integer, which the script's commands take as they are (Redis writes an integer's digits); a
    value that is neither (None, true, an object) fails the script, whose chunk is then written
    one update at a time through ``_encode_one``, each value made text. Text Redis
    cannot take (a lone surrogate, from an exception's text or a producer's message id) is
    replaced, not allowed to fail the write."""
    return json.dumps([(mid, str(order), fields) for mid, order, fields in updates], ensure_ascii=False,
                      separators=(",", ":"), default=str).encode("utf-8", "replace")


def _encode_one(update: tuple[str, int, dict[str, Any]]) -> bytes:
    """One update with its id and every value made text (None left out)."""
    mid, order, fields = update
    return json.dumps([(record_text(mid), str(order), _strings(fields))], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8", "replace")


def _script_failed(exc: redis.ResponseError) -> bool:
    """Whether the script itself failed on its input (a Lua error, an argument a command refused),
    not Redis refusing to run it (READONLY, OOM, BUSY, MISCONF: every call fails alike until Redis
    takes writes again, also when a command inside the script meets it)."""
    text = str(exc)
    if redis_outage(exc) or text.startswith("NOPERM"):
        return False
    return "user_script:" in text or "Error running script" in text


def _strings(fields: dict[str, Any]) -> dict[str, str]:
    return {name: record_text(value) for name, value in fields.items() if value is not None}


class RedisJobStore:
    """JobStore in Redis: each write of a batch is one script call per CHUNK jobs."""

    def __init__(self, client: Any, namespace: str, *, retention_s: float = 86_400) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>jobs:"
        self.retention_ms = int(retention_s * 1000)
        self._write = client.register_script(_WRITE)
        self._cancel = client.register_script(_CANCEL)

    def _key(self, message_id: str) -> str:
        return f"{self.namespace}j:{message_id}"

    def write(self, updates: Sequence[tuple[str, int, dict[str, Any]]]) -> None:
        if not updates:
            return
        now = _ms()
        keys = [f"{self.namespace}index"]
        prefix = f"{self.namespace}j:"
        for start in range(0, len(updates), CHUNK):
            chunk = updates[start:start + CHUNK]
            try:
                self._write(keys=keys, args=[now, self.retention_ms, prefix, _encode(chunk)])
            except redis.ResponseError as exc:
                if not _script_failed(exc):
                    raise  # Redis refuses every write for now (READONLY, OOM, BUSY...): kept for the next
                # One update the script cannot take (an id that is not text, from a producer that
                # is not ours) must not fail the others, nor every write after this one (a failed
                # write is tried again): each alone, and the one the script fails on is dropped.
                for update in chunk:
                    try:
                        self._write(keys=keys, args=[now, self.retention_ms, prefix, _encode_one(update)])
                    except redis.ResponseError as one:
                        if not _script_failed(one):
                            raise
                        logger.warning("Job record of message %r dropped: the store's script failed on it (%s).",
                                       update[0], one)

    def get(self, message_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self._key(message_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    def recent(self, limit: int, *, actor: str | None = None, status: str | None = None,
               scan: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        step = max(limit, 200)
        for start in range(0, scan, step):
            ids = [_text(m) for m in self.client.zrevrange(f"{self.namespace}index", start, start + step - 1)]
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for mid in ids:
                pipe.hgetall(self._key(mid))
            for mid, raw in zip(ids, pipe.execute(), strict=True):
                record = {_text(k): _text(v) for k, v in raw.items()}
                if not record or (actor and record.get("actor") != actor) or (
                        status and record.get("status") != status):
                    continue
                out.append((mid, record))
                if len(out) >= limit:
                    return out
        return out

    def request_cancel(self, message_id: str, now_ms: int) -> str | None:
        previous = self._cancel(keys=[self._key(message_id), f"{self.namespace}cancel"],
                                args=[message_id, now_ms, self.retention_ms])
        return None if previous is None else _text(previous)

    def cancelled_since(self, since_ms: int) -> tuple[list[str], int]:
        rows = self.client.zrangebyscore(f"{self.namespace}cancel", since_ms, "+inf", withscores=True)
        cursor = max((int(score) for _, score in rows), default=since_ms)
        return [_text(mid) for mid, _ in rows], cursor

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_ms: int) -> None:
        self.client.hset(f"{self.namespace}workers", worker_id,
                         json.dumps({**info, "expires_at": _ms() + ttl_ms}))

    def remove_worker(self, worker_id: str) -> None:
        self.client.hdel(f"{self.namespace}workers", worker_id)

    def workers(self) -> list[dict[str, Any]]:
        now = _ms()
        out, stale = [], []
        for worker_id, raw in self.client.hgetall(f"{self.namespace}workers").items():
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
            if int(info.get("expires_at", 0)) < now:
                stale.append(worker_id)
            else:
                out.append(info)
        if stale:
            self.client.hdel(f"{self.namespace}workers", *stale)
        return sorted(out, key=lambda w: (str(w.get("host")), int(w.get("pid") or 0)))


class InMemoryJobStore:
    """JobStore in this process's memory, with the same rules as the Redis one."""

    def __init__(self, *, retention_s: float = 86_400) -> None:
        self.retention_ms = int(retention_s * 1000)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, str]] = {}
        self._touched: dict[str, int] = {}
        self._cancels: dict[str, int] = {}
        self._workers: dict[str, dict[str, Any]] = {}

    def _expire(self, now: int) -> None:
        # _touched is in the order of the last touch: the expired ones are at its front.
        while self._touched:
            mid, touched = next(iter(self._touched.items()))
            if touched >= now - self.retention_ms:
                break
            del self._touched[mid]
            self._jobs.pop(mid, None)
        while self._cancels:
            mid, asked = next(iter(self._cancels.items()))
            if asked >= now - self.retention_ms:
                break
            del self._cancels[mid]

    def write(self, updates: Sequence[tuple[str, int, dict[str, str]]]) -> None:
        now = _ms()
        with self._lock:
            for mid, order, given in updates:
                record = self._jobs.setdefault(mid, {})
                current = record.get("order")
                after = fold(record, None if current is None else int(current), order, _strings(given))
                if after is None:
                    continue
                record["order"] = str(after)
                self._touched.pop(mid, None)
                self._touched[mid] = now
            self._expire(now)

    def get(self, message_id: str) -> dict[str, str] | None:
        with self._lock:
            record = self._jobs.get(message_id)
            return dict(record) if record else None

    def recent(self, limit: int, *, actor: str | None = None, status: str | None = None,
               scan: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            ids = list(reversed(self._touched))[:scan]
            out = []
            for mid in ids:
                record = self._jobs[mid]
                if (actor and record.get("actor") != actor) or (status and record.get("status") != status):
                    continue
                out.append((mid, dict(record)))
                if len(out) >= limit:
                    break
            return out

    def request_cancel(self, message_id: str, now_ms: int) -> str | None:
        with self._lock:
            record = self._jobs.get(message_id)
            if record is None:
                return None
            status = record.get("status", "")
            if status in FINAL:
                return status
            record["cancel_requested_at"] = record["updated_at"] = str(now_ms)
            self._cancels.pop(message_id, None)  # kept in the order they were asked, for _expire
            self._cancels[message_id] = now_ms
            if status in WAITING:
                record.update(status=CANCELLED, finished_at=str(now_ms), reason="cancelled before it ran")
            return status

    def cancelled_since(self, since_ms: int) -> tuple[list[str], int]:
        with self._lock:
            rows = [(m, t) for m, t in self._cancels.items() if t >= since_ms]
        return [m for m, _ in rows], max((t for _, t in rows), default=since_ms)

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_ms: int) -> None:
        with self._lock:
            self._workers[worker_id] = {**info, "expires_at": _ms() + ttl_ms}

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    def workers(self) -> list[dict[str, Any]]:
        now = _ms()
        with self._lock:
            return sorted((w for w in self._workers.values() if w["expires_at"] >= now),
                          key=lambda w: (str(w.get("host")), int(w.get("pid") or 0)))
