"""Redis consumption without polling: atelier's enqueue and fetch scripts, and the wake-up listener.

Dramatiq's Redis consumer polls: when a queue is empty it sleeps 2.5-5 ms, then twice as long, up
to the worker timeout (1 s with `dramatiq actors`), so a message sent to an idle worker waits for
the next poll (43-53 ms at the median, 465-638 ms at p99 in bench/worker_latency.py). Here:

- the enqueue script (``ENQUEUE``) does what Dramatiq's does (HSET of the body, RPUSH of its id)
  and, when the push made the queue non-empty, PUBLISHes to the queue's wake-up channel;
- each worker process holds one pub/sub connection (``WakeupListener``), subscribed to the
  channels of the queues it consumes, and sets the events of the consumers waiting on them;
- an idle consumer waits on its event, with the worker timeout as its limit, then fetches with
  the fetch script (``FETCH``), which moves ids into the process's ack set exactly as Dramatiq's
  does (LPOP + SADD, atomically) and returns each id with its body.

Only the transition from empty to non-empty publishes, so a busy queue costs nothing extra: a
consumer that found the queue empty is waiting for exactly that transition, and one that did not
(it took as much as it could hold) fetches again when its room frees. Producers that do not
publish (plain Dramatiq producers and workers) are still seen within the worker timeout.

The fetch script also runs maintenance, on a clock instead of Dramatiq's 0.1 % chance per call:
a dead worker's ack set for the queue goes back to the queue (time-based, see
``AtelierRedisBroker``), and dead-lettered messages past their TTL are dropped; the part that
lists keys (``KEYS``, to forget a dead worker with no ack set left) keeps Dramatiq's chance.
Everything uses Dramatiq's key layout, which the dashboard and ``RequeueUnfinished`` read.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

#: enqueue(keys=[namespace], args=[queue_name, message_id, body, channel(, ack set, hash, id)]): with
#: the last three, the enqueue moves a delay queue's delivery: it is acked in the same call, and
#: nothing is enqueued if the ack set no longer holds it (0).
ENQUEUE = """
if ARGV[7] then
    if redis.call("srem", ARGV[5], ARGV[7]) == 0 then
        return 0
    end
    redis.call("hdel", ARGV[6], ARGV[7])
end
local queue = KEYS[1] .. ":" .. ARGV[1]
redis.call("hset", queue .. ".msgs", ARGV[2], ARGV[3])
if redis.call("rpush", queue, ARGV[2]) == 1 then
    redis.call("publish", ARGV[4], "")
end
"""

#: fetch(keys=[namespace], args=[timestamp, queue_name, worker_id, heartbeat_timeout,
#:       dead_message_ttl, maintenance, max_unpack_size, count, channel])
#: maintenance: "0" none, "1" requeue dead workers' ack sets and expire dead letters, "2" also
#: forget dead workers with no ack set left (KEYS). Returns {id1, body1, id2, body2, ...}, a body
#: nil when the id has none in the queue's hash. With count 0 it only beats the heartbeat.
FETCH = """
local namespace = KEYS[1]
local timestamp = ARGV[1]
local queue_name = ARGV[2]
local worker_id = ARGV[3]
local heartbeat_timeout = ARGV[4]
local dead_message_ttl = ARGV[5]
local maintenance = ARGV[6]
local max_unpack_size = tonumber(ARGV[7])
local count = tonumber(ARGV[8])
local channel = ARGV[9]

local acks = namespace .. ":__acks__." .. worker_id
local heartbeats = namespace .. ":__heartbeats__"
redis.call("zadd", heartbeats, timestamp, worker_id)

local queue_canonical_name = queue_name
if string.sub(queue_name, -3) == ".DQ" then
    queue_canonical_name = string.sub(queue_name, 1, -4)
end
local queue_acks = acks .. "." .. queue_name
local queue_full_name = namespace .. ":" .. queue_name
local queue_messages = queue_full_name .. ".msgs"
local xqueue_full_name = namespace .. ":" .. queue_canonical_name .. ".XQ"
local xqueue_messages = xqueue_full_name .. ".msgs"

local function chunks(tbl)
    local i = 1
    return function()
        if i <= #tbl then
            local chunk = {}
            local last = math.min(i + max_unpack_size - 1, #tbl)
            for j = i, last do
                chunk[#chunk + 1] = tbl[j]
            end
            i = last + 1
            return chunk
        end
    end
end

local requeued = 0
if maintenance ~= "0" then
    -- As Dramatiq's dispatch.lua: a worker silent for heartbeat_timeout is dead; its
    -- fetched-but-unacked messages of this queue go back to the queue.
    local dead_workers = redis.call("zrangebyscore", heartbeats, 0, timestamp - heartbeat_timeout)
    for i = 1, #dead_workers do
        local dead_worker = dead_workers[i]
        local dead_worker_acks = namespace .. ":__acks__." .. dead_worker
        local dead_worker_queue_acks = dead_worker_acks .. "." .. queue_name
        local message_ids = redis.call("smembers", dead_worker_queue_acks)
        if next(message_ids) then
            for _, message_id in ipairs(message_ids) do
                if redis.call("hexists", queue_messages, message_id) > 0 then
                    redis.call("rpush", queue_full_name, message_id)
                    requeued = requeued + 1
                end
            end
            redis.call("del", dead_worker_queue_acks)
        end
        if maintenance == "2" then
            local ack_queues = redis.call("keys", dead_worker_acks .. "*")
            if not next(ack_queues) then
                redis.call("zrem", heartbeats, dead_worker)
            end
        end
    end

    local dead_message_ids = redis.call("zrangebyscore", xqueue_full_name, 0, timestamp - dead_message_ttl)
    for batch in chunks(dead_message_ids) do
        redis.call("zrem", xqueue_full_name, unpack(batch))
        redis.call("hdel", xqueue_messages, unpack(batch))
    end
end

local message_ids = {}
for i = 1, math.min(count, max_unpack_size) do
    local message_id = redis.call("lpop", queue_full_name)
    if not message_id then
        break
    end
    message_ids[i] = message_id
    redis.call("sadd", queue_acks, message_id)
end

if requeued > 0 and redis.call("llen", queue_full_name) > 0 then
    -- What came back is more than this fetch took: wake the other consumers.
    redis.call("publish", channel, "")
end

local result = {}
if next(message_ids) then
    local bodies = redis.call("hmget", queue_messages, unpack(message_ids))
    for i = 1, #message_ids do
        result[2 * i - 1] = message_ids[i]
        result[2 * i] = bodies[i]
    end
end
return result
"""


def wake_channel(namespace: str, queue_name: str) -> str:
    """The pub/sub channel an enqueue onto an empty ``queue_name`` publishes to."""
    return f"{namespace}:{queue_name}.wake"


class WakeupListener:
    """One pub/sub connection per broker (a worker process), on a thread of its own: sets the
    events registered for a channel whenever something is published to it.

    It sends nothing while idle but a PING after ``ping_after`` seconds of silence (to notice a
    connection that died without closing). Whenever it (re)subscribes to a channel, it sets that
    channel's events: notifications may have been missed before, and the consumer fetches once.
    If Redis cannot be reached it retries with backoff; consumers meanwhile fall back to fetching
    once per worker timeout, so nothing depends on it but latency.
    """

    def __init__(self, connect: Callable[[], Any], *, ping_after: float = 60.0) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._connect = connect
        self._ping_after = ping_after
        self._lock = threading.Lock()
        self._events: dict[bytes, set[threading.Event]] = {}
        self._poke_r, self._poke_w = socket.socketpair()
        self._poke_r.setblocking(False)
        self._poke_w.setblocking(False)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="redis-wakeups", daemon=True)
        self._started = False

    def register(self, channel: str, event: threading.Event) -> None:
        key = channel.encode()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
            if not self._started:
                self._started = True
                self._thread.start()
        self._poke()

    def unregister(self, channel: str, event: threading.Event) -> None:
        key = channel.encode()
        with self._lock:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]
        self._poke()

    def close(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._poke()
        if self._started:
            self._thread.join(timeout)
        for sock in (self._poke_r, self._poke_w):
            sock.close()

    def _poke(self) -> None:
        try:
            self._poke_w.send(b"x")
        except (BlockingIOError, OSError):  # full (a poke is pending anyway) or closed
            pass

    def _wake(self, key: bytes | None = None) -> None:
        with self._lock:
            if key is None:
                events = [e for group in self._events.values() for e in group]
            else:
                events = list(self._events.get(key, ()))
        for event in events:
            event.set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped:
            conn = None
            try:
                conn = self._connect()
                conn.connect()
                backoff = 0.1
                self._serve(conn)
            except Exception as exc:
                if self._stopped:
                    break
                self.logger.warning("Redis wake-up listener: %s; consumers poll once per worker timeout until it is "
                                    "back (retrying in %.1f s).", exc, backoff)
                self._wake()  # whatever was published meanwhile is lost: fetch once
                self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if conn is not None:
                    conn.disconnect()

    def _sleep(self, seconds: float) -> None:
        select.select([self._poke_r], [], [], seconds)
        self._drain_pokes()

    def _drain_pokes(self) -> None:
        try:
            while self._poke_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self, conn: Any) -> None:
        subscribed: set[bytes] = set()
        last_heard = time.monotonic()
        ping_sent = False
        while not self._stopped:
            with self._lock:
                wanted = set(self._events)
            if wanted - subscribed:
                conn.send_command("SUBSCRIBE", *sorted(wanted - subscribed), check_health=False)
            if subscribed - wanted:
                conn.send_command("UNSUBSCRIBE", *sorted(subscribed - wanted), check_health=False)
            subscribed = wanted
            if not conn.can_read(timeout=0):
                if not subscribed:  # nothing to listen to: wait for a registration
                    self._sleep(self._ping_after)
                    last_heard = time.monotonic()
                    continue
                silent = time.monotonic() - last_heard
                if silent >= self._ping_after:
                    if ping_sent:
                        raise ConnectionError(f"no answer from Redis for {silent:.0f} s")
                    conn.send_command("PING", check_health=False)
                    ping_sent = True
                    last_heard = time.monotonic()  # the answer is due within another period
                    continue
                ready, _, _ = select.select([conn._sock, self._poke_r], [], [], self._ping_after - silent)
                if self._poke_r in ready:
                    self._drain_pokes()
                if conn._sock not in ready:
                    continue
            while conn.can_read(timeout=0):
                reply = conn.read_response()
                last_heard = time.monotonic()
                ping_sent = False
                if isinstance(reply, list) and len(reply) >= 2:
                    kind = reply[0]
                    if kind in (b"message", b"subscribe"):
                        # A subscription just made: what was published before it went unseen.
                        self._wake(reply[1])
