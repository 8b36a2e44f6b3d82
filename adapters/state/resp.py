"""A lean path for the two Redis commands every deduplicated message sends.

redis-py spends 40-50 µs of Python per command here (connection pool checkout, argument
encoding, its pure-Python reply parser), all of it holding the GIL that a worker's consumer
thread needs. The dedup acquire (``SET key value NX GET PX ms``) and the batched completions
(``SET key done PX ms``, pipelined) have replies simple enough to read directly: a bulk string or
nil, and ``+OK``. Connections are made by redis-py (so AUTH, SELECT, TLS and timeouts follow the
URL exactly), one per thread, and used for these commands alone.
"""

from __future__ import annotations

import threading
from typing import Any

import redis


class RespError(redis.ResponseError):
    """Redis answered with an error reply."""


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_set(name: bytes, value: bytes, px: int, *, nx_get: bool = False) -> bytes:
    """``SET name value [NX GET] PX px`` in the protocol's request form."""
    head = b"*7\r\n$3\r\nSET\r\n" if nx_get else b"*5\r\n$3\r\nSET\r\n"
    flags = b"$2\r\nNX\r\n$3\r\nGET\r\n$2\r\nPX\r\n" if nx_get else b"$2\r\nPX\r\n"
    return head + _bulk(name) + _bulk(value) + flags + _bulk(str(px).encode())


class LeanConnections:
    """One raw connection per thread, made by the client's own connection pool."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._local = threading.local()

    def _socket(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.client.connection_pool.make_connection()
            conn.connect()
            if getattr(conn, "_sock", None) is None:  # not a socket connection redis-py exposes
                conn.disconnect()
                raise redis.ConnectionError("no raw socket to use")
            self._local.conn = conn
        return conn._sock

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # closing a broken connection: nothing to report
                pass

    def _exchange(self, request: bytes, replies: int) -> list[bytes | None]:
        """Send ``request`` and read ``replies`` replies, each a simple string, an error or a bulk
        string (nil included). Any failure closes this thread's connection: a half-read reply
        must never be taken for the next command's."""
        try:
            sock = self._socket()
            sock.sendall(request)
            return _read_replies(sock, replies)
        except RespError:
            raise
        except (OSError, ValueError, redis.RedisError) as exc:
            self._drop()
            if isinstance(exc, redis.RedisError):
                raise
            raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
        except BaseException:
            self._drop()
            raise

    def set_nx_get(self, name: bytes, value: bytes, px: int) -> bytes | None:
        """``SET name value NX GET PX px``: None if the key was free (and is now ours), else its value."""
        (reply,) = self._exchange(pack_set(name, value, px, nx_get=True), 1)
        return reply

    def set_nx_get_many(self, items: list[tuple[bytes, bytes, int]]) -> list[bytes | None]:
        """set_nx_get for each (name, value, px), in one round trip."""
        if not items:
            return []
        return self._exchange(b"".join(pack_set(n, v, px, nx_get=True) for n, v, px in items), len(items))

    def set_many(self, items: list[tuple[bytes, bytes, int]]) -> None:
        """``SET name value PX px`` for each item, in one round trip."""
        if items:
            self._exchange(b"".join(pack_set(n, v, px) for n, v, px in items), len(items))


def _read_replies(sock: Any, count: int) -> list[bytes | None]:
    buf = b""
    out: list[bytes | None] = []
    pos = 0
    error: bytes | None = None
    while len(out) < count:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise redis.ConnectionError("Redis closed the connection")
            buf = buf[pos:] + chunk
            pos = 0
            continue
        kind, line = buf[pos:pos + 1], buf[pos + 1:end]
        if kind == b"$":
            size = int(line)
            if size < 0:
                out.append(None)
                pos = end + 2
                continue
            while len(buf) < end + 2 + size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection")
                buf += chunk
            out.append(buf[end + 2:end + 2 + size])
            pos = end + 2 + size + 2
        elif kind in (b"+", b":"):
            out.append(line)
            pos = end + 2
        elif kind == b"-":
            error = error or line  # keep reading: the connection must stay in step
            out.append(None)
            pos = end + 2
        else:
            raise ValueError(f"unexpected Redis reply {buf[pos:end][:40]!r}")
    if pos != len(buf):
        raise ValueError("Redis sent more than was asked for")
    if error is not None:
        raise RespError(error.decode(errors="replace"))
    return out
