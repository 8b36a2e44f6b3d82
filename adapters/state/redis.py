"""Middleware state in Redis. Every read-modify-write is one Lua script, so concurrent workers
on any number of hosts see one consistent state. Keys live under ``atelier:<QUEUE_PREFIX>``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.state.resp import LeanConnections, RespError
from domain.resilience import BreakerDecision, BreakerPolicy, CircuitState, DedupOutcome, lease_outcome


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# For holder ARGV[1]: '' when it has the key now (free, or its own lease: extended), else what
# holds it ('done' or 'r:<holder>'), which the caller reads with domain.resilience.lease_outcome.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'r:' .. ARGV[1], 'PX', ARGV[2])
  return ''
end
if v == 'r:' .. ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return ''
end
return v
"""

# Extend the lease of ARGV[1] (the whole value, 'r:<holder>'), or take the key again if it is free.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == 'r:' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_TAKE_ONCE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


def _held_outcome(held: bytes | None, token: str) -> DedupOutcome | None:
    """What ``SET NX GET`` answered to holder ``token``: the key was free (ours now), done,
    another delivery of the same message, another message; None for its own lease (a lease taken
    at fetch, taken again at start), which the acquire script extends, or takes if the lease ended
    since the SET (an extend alone would call that "busy")."""
    return lease_outcome(None if held is None else held.decode(errors="replace"), token)


class RedisDedupStore:
    """One string per key: ``r:<holder>`` while a delivery runs (PX lease, renewed by its holder),
    ``done`` for the window.

    acquire is one ``SET key r:<holder> NX GET PX lease`` (Redis 7): it takes a free key and says
    who holds a taken one in the same round trip, cheaper than a script; on older servers, the
    script. That command and the pipelined completions go through LeanConnections
    (adapters/state/resp.py): they run for every deduplicated message, and redis-py's own path
    costs several times as much Python per command. Renewals (one pipeline per tick for all the
    leases a process holds), releases and claims are rare and go through redis-py.
    """

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>dedup:"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_once = client.register_script(_TAKE_ONCE)
        self._set_nx_get = True
        self._lean = LeanConnections(client)

    def acquire(self, key: str, token: str, lease_ms: int) -> DedupOutcome:
        name, value = self.namespace + key, f"r:{token}"
        if self._set_nx_get:
            try:
                held = self._lean.set_nx_get(name.encode(), value.encode(), int(lease_ms))
            except RespError as exc:
                self._refused(exc)
            else:
                outcome = _held_outcome(held, token)
                if outcome is not None:
                    return outcome
        held = self._acquire(keys=[name], args=[token, int(lease_ms)])
        return DedupOutcome.ACQUIRED if not held else _held_outcome(held, token) or DedupOutcome.ACQUIRED

    def take_free(self, items: Sequence[tuple[str, str, int]]) -> list[DedupOutcome]:
        requests = [((self.namespace + key).encode(), f"r:{token}".encode(), int(lease_ms))
                    for key, token, lease_ms in items]
        if self._set_nx_get and requests:
            try:
                replies = self._lean.set_nx_get_many(requests)
            except RespError as exc:
                self._refused(exc)  # the SETs that failed did nothing
            else:
                # Only a free key is taken here; whatever holds a taken one, it is decided at start.
                return [DedupOutcome.ACQUIRED if held is None
                        else DedupOutcome.DONE if held == b"done" else DedupOutcome.BUSY
                        for held in replies]
        # Redis < 7: SET NX alone takes a free key but cannot say what holds a taken one.
        outcomes = []
        for key, token, lease_ms in items:
            name = self.namespace + key
            if self.client.set(name, f"r:{token}", nx=True, px=int(lease_ms)):
                outcomes.append(DedupOutcome.ACQUIRED)
            else:
                outcomes.append(DedupOutcome.DONE if _text(self.client.get(name)) == "done" else DedupOutcome.BUSY)
        return outcomes

    def renew(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key, token, lease_ms in items:
            self._renew(keys=[self.namespace + key], args=[f"r:{token}", max(int(lease_ms), 1)], client=pipe)
        return [bool(int(reply)) for reply in pipe.execute()]

    def remaining_ms(self, key: str) -> int:
        return max(int(self.client.pttl(self.namespace + key)), 0)  # -2: no key, -1: no expiry

    def _refused(self, exc: RespError) -> None:
        """Redis < 7 refuses NX with GET (a syntax error): use the script from now on. Any other
        error reply (OOM, READONLY during a failover) is the server's state, not its version."""
        if "syntax" not in str(exc).lower():
            raise exc
        self._set_nx_get = False

    def complete(self, key: str, token: str, window_ms: int) -> None:
        # Unconditional: the work is done whoever holds the lease now.
        self.client.set(self.namespace + key, b"done", px=max(int(window_ms), 1))

    def complete_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        self._lean.set_many([((self.namespace + key).encode(), b"done", max(int(window_ms), 1))
                             for key, _token, window_ms in items])

    def release(self, key: str, token: str) -> None:
        self._release(keys=[self.namespace + key], args=[token])

    def claim(self, key: str, holder: str, ttl_ms: int) -> str:
        return _text(self._take_once(keys=[self.namespace + key], args=[holder, max(int(ttl_ms), 1)]))


# KEYS: state hash, failures zset, registry set. Hash fields: state, opened_at, trials, trial_since,
# reset (the reset timeout it was opened with).
_ALLOW = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'closed' then return {1, 'closed', 0, 0, ''} end
local now = tonumber(ARGV[1])
local reset = tonumber(ARGV[2])
local maxt = tonumber(ARGV[3])
if st == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
  if now < opened + reset then return {0, 'open', opened + reset, 0, ''} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trials', 1, 'trial_since', now)
  return {1, 'half_open', 0, 1, 'open'}
end
local trials = tonumber(redis.call('HGET', KEYS[1], 'trials') or '0')
local since = tonumber(redis.call('HGET', KEYS[1], 'trial_since') or '0')
if now >= since + reset then
  -- trials that never reported (a worker died) expire after the reset timeout
  trials = 0
  since = now
  redis.call('HSET', KEYS[1], 'trial_since', now)
end
if trials < maxt then
  redis.call('HSET', KEYS[1], 'trials', trials + 1)
  return {1, 'half_open', 0, 1, ''}
end
return {0, 'half_open', since + reset, 0, ''}
"""

_FAILURE = """
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
local now = tonumber(ARGV[1])
if st == 'open' then return '' end
redis.call('SADD', KEYS[3], ARGV[5])
if st == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'trials', 0, 'reset', ARGV[6])
  redis.call('DEL', KEYS[2])
  return 'half_open'
end
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], window)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'trials', 0, 'reset', ARGV[6])
  redis.call('DEL', KEYS[2])
  return 'closed'
end
redis.call('HSETNX', KEYS[1], 'state', 'closed')
return ''
"""

_SUCCESS = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'trials', 0)
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

_RELEASE_TRIAL = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  local t = tonumber(redis.call('HGET', KEYS[1], 'trials') or '0')
  if t > 0 then redis.call('HSET', KEYS[1], 'trials', t - 1) end
end
return 0
"""


class RedisBreakerStore:
    """Per circuit: a hash (state, opened_at, trials, trial_since) and a sorted set of recent
    failure times (the window); a set names every circuit that ever failed (for metrics)."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>circuit:"
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)
        self._release = client.register_script(_RELEASE_TRIAL)
        self._seq = 0

    def _keys(self, circuit: str) -> list[str]:
        return [f"{self.namespace}{circuit}", f"{self.namespace}{circuit}:failures", f"{self.namespace}_all"]

    def allow(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> BreakerDecision:
        allowed, state, retry_at, trial, came_from = self._allow(
            keys=self._keys(circuit), args=[now_ms, policy.reset_timeout_ms, policy.half_open_trials])
        state = CircuitState(_text(state))
        came_from = _text(came_from)
        return BreakerDecision(bool(allowed), state, int(retry_at), bool(trial),
                               (CircuitState(came_from), state) if came_from else None)

    def record_failure(self, circuit: str, now_ms: int, policy: BreakerPolicy,
                       ) -> tuple[CircuitState, CircuitState] | None:
        self._seq += 1
        member = f"{now_ms}:{id(self)}:{self._seq}"  # unique per failure
        came_from = _text(self._failure(keys=self._keys(circuit), args=[
            now_ms, policy.window_ms, policy.failure_threshold, member, circuit, policy.reset_timeout_ms]))
        return (CircuitState(came_from), CircuitState.OPEN) if came_from else None

    def record_success(self, circuit: str, trial: bool) -> tuple[CircuitState, CircuitState] | None:
        if not trial:
            return None  # closed stays closed; nothing to write on the hot path
        if self._success(keys=self._keys(circuit)):
            return CircuitState.HALF_OPEN, CircuitState.CLOSED
        return None

    def release_trial(self, circuit: str) -> None:
        self._release(keys=self._keys(circuit))

    def peek(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> tuple[CircuitState, bool]:
        state, opened, reset = self.client.hmget(self._keys(circuit)[0], "state", "opened_at", "reset")
        state = CircuitState(_text(state)) if state else CircuitState.CLOSED
        if state is CircuitState.OPEN:
            # The reset timeout of the actor that opened it, which may differ from the default.
            return state, now_ms >= int(opened or 0) + (int(reset) if reset else policy.reset_timeout_ms)
        return state, True

    def states(self) -> dict[str, CircuitState]:
        names = sorted(_text(n) for n in self.client.smembers(self._keys("")[2]))
        if not names:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(self._keys(name)[0], "state")
        return {n: CircuitState(_text(s)) if s else CircuitState.CLOSED for n, s in zip(names, pipe.execute(),
                                                                                          strict=True)}


_CLAIM = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  if not v then break end
  out[#out + 1] = v
end
return out
"""

# Back to the head, oldest first, so recovered items go out before newer ones.
_RECOVER = """
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[2])
  if not v then break end
  redis.call('RPUSH', KEYS[1], v)
  n = n + 1
end
return n
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisFallbackQueue:
    """Per circuit a list; items are pushed on the left and claimed from the right (FIFO) into a
    processing list with RPOPLPUSH, atomically: an item is always in one list or the other, so a
    drain that dies between claim and enqueue loses nothing (the next drain recovers it)."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>fallback:"
        self._claim = client.register_script(_CLAIM)
        self._recover = client.register_script(_RECOVER)
        self._unlock = client.register_script(_UNLOCK)

    def _list(self, circuit: str) -> str:
        return f"{self.namespace}{circuit}"

    def _processing(self, circuit: str) -> str:
        return f"{self.namespace}{circuit}:processing"

    def _registry(self) -> str:
        return f"{self.namespace}_all"

    def push(self, circuit: str, item: bytes) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self._registry(), circuit)
        pipe.lpush(self._list(circuit), item)
        pipe.execute()

    def circuits(self) -> list[str]:
        return sorted(_text(n) for n in self.client.smembers(self._registry()))

    def lengths(self) -> dict[str, int]:
        names = self.circuits()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.llen(self._list(name))
            pipe.llen(self._processing(name))
        counts = pipe.execute()
        return {n: counts[2 * i] + counts[2 * i + 1] for i, n in enumerate(names)}

    def lock(self, circuit: str, token: str, ttl_ms: int) -> bool:
        return bool(self.client.set(f"{self._list(circuit)}:lock", token, nx=True, px=ttl_ms))

    def unlock(self, circuit: str, token: str) -> None:
        self._unlock(keys=[f"{self._list(circuit)}:lock"], args=[token])

    def claim(self, circuit: str, limit: int) -> list[bytes]:
        return list(self._claim(keys=[self._list(circuit), self._processing(circuit)], args=[int(limit)]))

    def ack(self, circuit: str, item: bytes) -> None:
        self.client.lrem(self._processing(circuit), 1, item)

    def recover(self, circuit: str) -> int:
        return int(self._recover(keys=[self._list(circuit), self._processing(circuit)]))
