"""Pacing of channel sends (the Pacer port): a business number's send rate and the pair rate (one
recipient), shared by every worker through Redis, or within one process in memory.

Safety: each rate is a sliding log of the sends it granted: at most ``limit`` in any ``window``,
where the window is the limit's own (a second for the send rate, the pair interval for the pair
rate) plus ``margin_ms``. The margin absorbs what happens between the decision and the request
reaching the channel (a commit, a thread switch), so sends granted a window apart never arrive
closer than the limit's. A slot is granted only when both the number's and the recipient's rates
have room, in one step (one Lua script): a refusal takes nothing.

Order: a refused send is promised a time (its rate's next free time, one spacing, window/limit,
after the previous promise) and told to wait until then. A promise is the delivery's place in
line: coming back (after sleeping, or parked and a little late) it is let through as soon as its
time has come and the log has room, whoever else is waiting; a newcomer queues behind the waiters
rather than taking the slot a waiter was promised. Promises not claimed within a grace period
(the delivery was done elsewhere, the worker died) are forgotten. ``hold`` blocks a number or a
recipient for a while (the channel answered a rate limit).

Dramatiq's rate limiters (dramatiq.rate_limits) do not fit: BucketRateLimiter and
WindowRateLimiter count in whole-second buckets (up to twice the limit across a bucket boundary,
and a pair window of 6 s lets sends through 5 s apart), answer only yes or no (no wait for the
delayed re-enqueue, no place in line), cannot take two limits at once (a number's slot taken, then
the recipient refused, is spent: they have no release), and retry WATCH/MULTI transactions under
contention; ConcurrentRateLimiter bounds concurrency, not a rate. docs/adr/0005-pacing.md measures it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.models import MessageChannel

log = logging.getLogger(__name__)

#: How long after its time a promise waits to be claimed: a parked message comes back up to the
#: worker timeout late, and may queue behind others in its worker.
GRACE_MS = 10_000
#: The longest hold a rate-limit answer sets: Meta's app and account limits count over an hour,
#: and a Retry-After of a day (from a proxy, say) must not stop a number for a day.
MAX_HOLD_S = 3600.0


@dataclass(frozen=True)
class PaceRule:
    """A channel's rates: ``rate_per_s`` sends per second from ``sender`` (the business number),
    one message per ``pair_interval_s`` to one recipient; 0 leaves that rate unpaced."""

    sender: str
    rate_per_s: int = 0
    pair_interval_s: float = 0.0


def _windows(rule: PaceRule, margin_ms: int) -> tuple[int, int, int, int]:
    """(number's limit, its window ms, pair limit, pair window ms)."""
    return (max(0, int(rule.rate_per_s)), 1000 + margin_ms,
            1 if rule.pair_interval_s > 0 else 0, int(rule.pair_interval_s * 1000) + margin_ms)


class _Unpaced:
    """What a store failure leaves: every send goes (the channel's own rate-limit answers still
    hold workers back through RateLimited), logged at most every 30 s."""

    def __init__(self) -> None:
        self._logged = 0.0

    def __call__(self, exc: BaseException) -> float:
        now = time.monotonic()
        if now - self._logged > 30:
            self._logged = now
            log.warning("pacing store unreachable, sending unpaced: %s: %s", type(exc).__name__, exc)
        return 0.0


# KEYS, per rate (number, then recipient): sends log, hold, next promise, promises.
# ARGV: number's limit, window ms, pair limit, pair window ms, token, member, grace ms.
# Returns the wait in ms (0: granted).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, member, grace = ARGV[5], ARGV[6], tonumber(ARGV[7])
local function decide(k, limit, window)
  local at = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  if limit <= 0 then return at end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[k])
  if n >= limit then
    local e = redis.call('ZRANGE', KEYS[k], n - limit, n - limit, 'WITHSCORES')
    at = math.max(at, tonumber(e[2]) + window)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now - grace)
  local mine = redis.call('ZSCORE', KEYS[k + 3], token)
  if mine then return math.max(at, tonumber(mine)) end
  if at <= now and redis.call('ZCARD', KEYS[k + 3]) == 0 then return at end
  local p = math.max(at, tonumber(redis.call('GET', KEYS[k + 2]) or '0'), now)
  local nxt = p + window / limit
  redis.call('ZADD', KEYS[k + 3], p, token)
  redis.call('PEXPIRE', KEYS[k + 3], math.ceil(p - now + grace))
  redis.call('SET', KEYS[k + 2], tostring(nxt), 'PX', math.ceil(nxt - now + grace))
  return math.max(p, now + 1)
end
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local plimit, pwindow = tonumber(ARGV[3]), tonumber(ARGV[4])
local pair_at = decide(5, plimit, pwindow)
if pair_at > now then return math.ceil(pair_at - now) end
local at = decide(1, limit, window)
if at > now then return math.ceil(at - now) end
for _, r in ipairs({{1, limit, window}, {5, plimit, pwindow}}) do
  if r[2] > 0 then
    redis.call('ZADD', KEYS[r[1]], now, member)
    redis.call('PEXPIRE', KEYS[r[1]], r[3])
    redis.call('ZREM', KEYS[r[1] + 3], token)
  end
end
return 0
"""

_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
local until_ = now + ms
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', ms)
end
return 0
"""


class RedisPacer:
    """The Pacer in Redis, one Lua script per decision on Redis's own clock (workers' clocks may
    disagree). Keys under ``<namespace><channel>:<sender>:`` (the number) and
    ``...:to:<recipient>:`` (the pair), each expiring once nothing in it matters."""

    def __init__(self, client: Any, namespace: str, rules: Mapping[MessageChannel, PaceRule], *,
                 margin_ms: int = 100, grace_ms: int = GRACE_MS) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>pace:"
        self.rules = dict(rules)
        self.margin_ms = margin_ms
        self.grace_ms = grace_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._hold = client.register_script(_HOLD)
        self._unpaced = _Unpaced()

    def _base(self, channel: MessageChannel, recipient: str | None) -> str:
        base = f"{self.namespace}{channel.value}:{self.rules[channel].sender}:"
        return base if recipient is None else f"{base}to:{recipient}:"

    def acquire(self, channel: MessageChannel, recipient: str, token: str) -> float:
        rule = self.rules.get(channel)
        if rule is None:
            return 0.0
        keys = [f"{base}{name}" for base in (self._base(channel, None), self._base(channel, recipient))
                for name in ("log", "hold", "next", "promised")]
        try:
            wait_ms = self._acquire(keys=keys, args=[*_windows(rule, self.margin_ms), token, uuid.uuid4().hex,
                                                     self.grace_ms])
        except Exception as exc:  # redis errors, connection refused, timeouts
            return self._unpaced(exc)
        return max(0, int(wait_ms)) / 1000

    def hold(self, channel: MessageChannel, recipient: str | None, seconds: float) -> None:
        if channel not in self.rules or not seconds or seconds <= 0:
            return
        try:
            self._hold(keys=[f"{self._base(channel, recipient)}hold"],
                       args=[max(1, int(min(seconds, MAX_HOLD_S) * 1000))])
        except Exception as exc:
            self._unpaced(exc)


@dataclass
class _Rate:
    log: list[float] = field(default_factory=list)
    hold: float = 0.0
    next: float = 0.0
    promised: dict[str, float] = field(default_factory=dict)


class InMemoryPacer:
    """The same rules within one process (the embedded and stub setups, unit tests): the Lua
    script's steps over a dict, under a lock. ``clock`` returns milliseconds."""

    def __init__(self, rules: Mapping[MessageChannel, PaceRule], *, margin_ms: int = 100, grace_ms: int = GRACE_MS,
                 clock: Callable[[], float] | None = None) -> None:
        self.rules = dict(rules)
        self.margin_ms = margin_ms
        self.grace_ms = grace_ms
        self._clock = clock or (lambda: time.time() * 1000)
        self._lock = threading.Lock()
        self._rates: dict[tuple[str, ...], _Rate] = {}

    def _rate(self, key: tuple[str, ...], now: float) -> _Rate:
        if len(self._rates) > 10_000:  # one per recipient: forget those with nothing left to say
            self._rates = {k: r for k, r in self._rates.items() if r.hold > now or r.promised
                           or (r.log and r.log[-1] > now - 3_600_000)}
        return self._rates.setdefault(key, _Rate())

    def _decide(self, rate: _Rate, limit: int, window: int, token: str, now: float) -> float:
        at = rate.hold
        if limit <= 0:
            return at
        rate.log = [t for t in rate.log if t > now - window]
        if len(rate.log) >= limit:
            at = max(at, rate.log[len(rate.log) - limit] + window)
        rate.promised = {k: p for k, p in rate.promised.items() if p >= now - self.grace_ms}
        if token in rate.promised:
            return max(at, rate.promised[token])
        if at <= now and not rate.promised:
            return at
        p = max(at, rate.next, now)
        rate.promised[token] = p
        rate.next = p + window / limit
        return max(p, now + 1)

    def acquire(self, channel: MessageChannel, recipient: str, token: str) -> float:
        rule = self.rules.get(channel)
        if rule is None:
            return 0.0
        limit, window, plimit, pwindow = _windows(rule, self.margin_ms)
        with self._lock:
            now = self._clock()
            number = self._rate((channel.value, rule.sender), now)
            pair = self._rate((channel.value, rule.sender, recipient), now)
            pair_at = self._decide(pair, plimit, pwindow, token, now)
            if pair_at > now:
                return (pair_at - now) / 1000
            at = self._decide(number, limit, window, token, now)
            if at > now:
                return (at - now) / 1000
            for rate, lim in ((number, limit), (pair, plimit)):
                if lim > 0:
                    rate.log.append(now)
                    rate.promised.pop(token, None)
            return 0.0

    def hold(self, channel: MessageChannel, recipient: str | None, seconds: float) -> None:
        rule = self.rules.get(channel)
        if rule is None or not seconds or seconds <= 0:
            return
        key = (channel.value, rule.sender) if recipient is None else (channel.value, rule.sender, recipient)
        with self._lock:
            now = self._clock()
            rate = self._rate(key, now)
            rate.hold = max(rate.hold, now + min(seconds, MAX_HOLD_S) * 1000)
