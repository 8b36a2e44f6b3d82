"""structlog set-up: one JSON object per line, or a readable console format.

Dramatiq's own stdlib logs go through the same renderer, so every line carries the
context the middleware binds (actor, message_id, queue, correlation_id, ...), and, while a span
is active, its trace_id and span_id (bootstrap/tracing.py).
"""

from __future__ import annotations

import logging
import sys

import structlog

from bootstrap.settings import Settings
from bootstrap.tracing import add_trace_ids
from runtime import merge_message_context

_configured = False


def _use_console(fmt: str) -> bool:
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    return sys.stderr.isatty()


def configure_logging(settings: Settings, *, force: bool = False) -> None:
    global _configured
    if _configured and not force:
        return
    _configured = True

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        merge_message_context,  # after merge_contextvars: what code binds itself wins
        add_trace_ids,  # trace_id, span_id of the active span; returns at once while tracing is off
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if _use_console(settings.log_format):
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Libraries that are chatty at INFO.
    for name in ("pika", "urllib3", "botocore", "httpx", "httpcore", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
