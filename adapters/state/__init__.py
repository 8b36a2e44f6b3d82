"""Shared state of the worker middleware: dedup keys, circuit breakers, fallback queues.

redis.py: atomic (SET NX PX, Lua), shared by every process and host. memory.py: one process, for
the StubBroker and the embedded default."""
