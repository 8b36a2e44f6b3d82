"""`atelier outbox ...`: inspect the outbox, revive dead events, run the relay by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _row(event: Any) -> dict[str, Any]:
    return {
        "id": event.id, "type": event.type, "aggregate": f"{event.aggregate_type}:{event.aggregate_id}",
        "correlation_id": event.correlation_id, "created_at": event.created_at.isoformat(),
        "published_at": event.published_at.isoformat() if event.published_at else None,
        "attempts": event.attempts, "dead": event.dead, "last_error": event.last_error,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from bootstrap import get_container

    relay = get_container().outbox_relay
    if args.dead:
        events = relay.list_dead(limit=args.limit)
    else:
        events = relay.list_events(published=False if args.pending else None, dead=False if args.pending else None,
                                   limit=args.limit)
    if args.json:
        for event in events:
            print(json.dumps(_row(event)))
        return 0
    for event in events:
        state = "dead" if event.dead else ("published" if event.published_at else f"pending({event.attempts})")
        error = f"  {event.last_error}" if event.last_error else ""
        print(f"{event.id}  {event.created_at:%Y-%m-%dT%H:%M:%S}  {state:<11} {event.type}  "
              f"{event.aggregate_type}:{event.aggregate_id}{error}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.models import parse_id

    relay = get_container().outbox_relay
    for event_id in args.event_ids:
        event = relay.retry(parse_id(event_id, "event id"))
        print(f"{event.id} due again")
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    """Relay now (--once), or run the relay loop in the foreground until SIGTERM/SIGINT."""
    import signal
    import threading

    import actors  # noqa: F401  (declares the subscriber actors on the broker the relay sends to)
    from bootstrap import get_container
    from bootstrap.settings import get_settings
    from entrypoints.relay_loop import RelayLoop

    settings = get_settings()
    container = get_container()
    if args.once:
        stats = container.outbox_relay.relay(settings.outbox_relay_budget_ms / 1000)
        print(json.dumps({"published": stats.published, "deliveries": stats.deliveries, "failed": stats.failed,
                          "dead": stats.dead, "broker_down": stats.broker_down, "more_due": stats.more_due}))
        return 3 if stats.broker_down else 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    RelayLoop(container.outbox_relay, settings.database_url, poll_interval=settings.outbox_poll_interval_ms / 1000,
              budget=settings.outbox_relay_budget_ms / 1000).run(stop)
    container.close()
    return 0


def register(subparsers: Any) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect and relay the transactional outbox").add_subparsers(
        dest="outbox_command", required=True)
    p = outbox.add_parser("list", help="list outbox events, newest first")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--dead", action="store_true", help="only dead events (failed OUTBOX_MAX_RETRIES times)")
    which.add_argument("--pending", action="store_true", help="only events not yet published")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_list)
    p = outbox.add_parser("retry", help="make dead events due again (attempts reset)")
    p.add_argument("event_ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_retry)
    p = outbox.add_parser("relay", help="run the relay loop in the foreground (or --once)")
    p.add_argument("--once", action="store_true", help="relay what is due now and exit")
    p.set_defaults(func=cmd_relay)
