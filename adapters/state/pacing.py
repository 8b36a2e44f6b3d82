"""Pacing of channel sends (the Pacer port): a business number's send rate and the pair rate (one
recipient), shared by every worker through Redis, or within one process in memory.

Each rate is a sliding log of send times: at most ``limit`` sends in any ``window``, where the
window is the limit's own (a second for the send rate, the pair interval for the pair rate) plus
``margin_ms``. The margin absorbs what happens between the decision and the request reaching the
channel (a commit, a thread switch): sends decided ``window`` apart never arrive closer than the
limit's window. A slot is taken only when both the number's and the recipient's rates have room,
in one step (one Lua script), so a refusal takes nothing.

A refused send gets a wait, not a slot: the time its rate frees, spread over the senders waiting
for it (a promise chain: each refusal is promised the next free time, one spacing, window/limit,
after the previous promise), so that parked messages come back one spacing apart instead of all at
once. Promises reserve nothing: a message coming back asks again. ``hold`` blocks a number or a
recipient for a while (the channel answered a rate limit).

Dramatiq's rate limiters (dramatiq.rate_limits) do not fit: BucketRateLimiter and
WindowRateLimiter count in whole-second buckets (up to twice the limit across a bucket boundary,
and a pair window of 6 s lets sends through 5 s apart), answer only yes or no (no wait for the
delayed re-enqueue), cannot take two limits at once (a number's slot taken, then the recipient
refused, is spent; they have no release), and retry WATCH/MULTI transactions under contention;
ConcurrentRateLimiter bounds concurrency, not a rate. docs/adr/0005-pacing.md has the measurement.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.models import MessageChannel

log = logging.getLogger(__name__)


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


# KEYS: number's log, hold, next promise; recipient's log, hold, next promise.
# ARGV: number's limit, window ms, pair limit, pair window ms, member. Returns the wait in ms (0: taken).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function free_at(log, hold, limit, window)
  local at = tonumber(redis.call('GET', hold) or '0')
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    local n = redis.call('ZCARD', log)
    if n >= limit then
      local e = redis.call('ZRANGE', log, n - limit, n - limit, 'WITHSCORES')
      local s = tonumber(e[2]) + window
      if s > at then at = s end
    end
  end
  return at
end
local function promise(key, at, limit, window)
  if limit <= 0 then return math.ceil(at - now) end
  local p = tonumber(redis.call('GET', key) or '0')
  if p < at then p = at end
  local nxt = p + window / limit
  redis.call('SET', key, tostring(nxt), 'PX', math.ceil(nxt - now + window))
  return math.ceil(p - now)
end
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local plimit, pwindow = tonumber(ARGV[3]), tonumber(ARGV[4])
local pair_at = free_at(KEYS[4], KEYS[5], plimit, pwindow)
if pair_at > now then return promise(KEYS[6], pair_at, plimit, pwindow) end
local at = free_at(KEYS[1], KEYS[2], limit, window)
if at > now then return promise(KEYS[3], at, limit, window) end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
end
if plimit > 0 then
  redis.call('ZADD', KEYS[4], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[4], pwindow)
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
    ``...:to:<recipient>:`` (the pair), each expiring with its window."""

    def __init__(self, client: Any, namespace: str, rules: Mapping[MessageChannel, PaceRule], *,
                 margin_ms: int = 100) -> None:
        self.client = client
        self.namespace = namespace  # e.g. "atelier:<prefix>pace:"
        self.rules = dict(rules)
        self.margin_ms = margin_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._hold = client.register_script(_HOLD)
        self._unpaced = _Unpaced()

    def _keys(self, channel: MessageChannel, recipient: str | None) -> list[str]:
        base = f"{self.namespace}{channel.value}:{self.rules[channel].sender}:"
        keys = [f"{base}log", f"{base}hold", f"{base}next"]
        if recipient is not None:
            keys += [f"{base}to:{recipient}:log", f"{base}to:{recipient}:hold", f"{base}to:{recipient}:next"]
        return keys

    def acquire(self, channel: MessageChannel, recipient: str) -> float:
        rule = self.rules.get(channel)
        if rule is None:
            return 0.0
        try:
            wait_ms = self._acquire(keys=self._keys(channel, recipient),
                                    args=[*_windows(rule, self.margin_ms), uuid.uuid4().hex])
        except Exception as exc:  # redis errors, connection refused, timeouts
            return self._unpaced(exc)
        return max(0, int(wait_ms)) / 1000

    def hold(self, channel: MessageChannel, recipient: str | None, seconds: float) -> None:
        if channel not in self.rules or not seconds or seconds <= 0:
            return
        keys = self._keys(channel, recipient)
        try:
            self._hold(keys=[keys[4] if recipient is not None else keys[1]], args=[max(1, int(seconds * 1000))])
        except Exception as exc:
            self._unpaced(exc)


class _Rate:
    def __init__(self) -> None:
        self.log: list[float] = []
        self.hold = 0.0
        self.next = 0.0


class InMemoryPacer:
    """The same rules within one process (the embedded and stub setups, unit tests): the Lua
    script's steps over a dict, under a lock. ``clock`` returns milliseconds."""

    def __init__(self, rules: Mapping[MessageChannel, PaceRule], *, margin_ms: int = 100,
                 clock: Callable[[], float] | None = None) -> None:
        self.rules = dict(rules)
        self.margin_ms = margin_ms
        self._clock = clock or (lambda: time.time() * 1000)
        self._lock = threading.Lock()
        self._rates: dict[tuple[str, ...], _Rate] = {}

    def _rate(self, key: tuple[str, ...], now: float) -> _Rate:
        if len(self._rates) > 10_000:  # one per recipient: forget those with nothing left to say
            self._rates = {k: r for k, r in self._rates.items() if r.hold > now or r.next > now
                           or (r.log and r.log[-1] > now - 3_600_000)}
        return self._rates.setdefault(key, _Rate())

    @staticmethod
    def _free_at(rate: _Rate, limit: int, window: int, now: float) -> float:
        at = rate.hold
        if limit > 0:
            rate.log = [t for t in rate.log if t > now - window]
            if len(rate.log) >= limit:
                at = max(at, rate.log[len(rate.log) - limit] + window)
        return at

    @staticmethod
    def _promise(rate: _Rate, at: float, limit: int, window: int, now: float) -> float:
        if limit <= 0:
            return at - now
        p = max(rate.next, at)
        rate.next = p + window / limit
        return p - now

    def acquire(self, channel: MessageChannel, recipient: str) -> float:
        rule = self.rules.get(channel)
        if rule is None:
            return 0.0
        limit, window, plimit, pwindow = _windows(rule, self.margin_ms)
        with self._lock:
            now = self._clock()
            number = self._rate((channel.value, rule.sender), now)
            pair = self._rate((channel.value, rule.sender, recipient), now)
            pair_at = self._free_at(pair, plimit, pwindow, now)
            if pair_at > now:
                return self._promise(pair, pair_at, plimit, pwindow, now) / 1000
            at = self._free_at(number, limit, window, now)
            if at > now:
                return self._promise(number, at, limit, window, now) / 1000
            if limit > 0:
                number.log.append(now)
            if plimit > 0:
                pair.log.append(now)
            return 0.0

    def hold(self, channel: MessageChannel, recipient: str | None, seconds: float) -> None:
        rule = self.rules.get(channel)
        if rule is None or not seconds or seconds <= 0:
            return
        key = (channel.value, rule.sender) if recipient is None else (channel.value, rule.sender, recipient)
        with self._lock:
            now = self._clock()
            rate = self._rate(key, now)
            rate.hold = max(rate.hold, now + seconds * 1000)
