"""`atelier dlq ...`: list, show, replay and purge dead letters (and the outbox's dead events)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def age(text: str) -> timedelta:
    """'90s', '15m', '2h', '7d', '1w' (or plain seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30s, 15m, 2h, 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    now = datetime.now(UTC)
    replayed = True if getattr(args, "replayed", False) else (None if getattr(args, "all", False) else False)
    return {
        "actor": args.actor,
        "older_than": now - args.older_than if args.older_than else None,
        "newer_than": now - args.newer_than if args.newer_than else None,
        "replayed": replayed,
    }


def _letter_row(letter: Any) -> dict[str, Any]:
    row = letter.asdict()
    row["source"] = "message"
    return row


def _event_row(event: Any) -> dict[str, Any]:
    return {"source": "outbox", "id": event.id, "type": event.type,
            "aggregate": f"{event.aggregate_type}:{event.aggregate_id}", "correlation_id": event.correlation_id,
            "created_at": event.created_at.isoformat(), "attempts": event.attempts, "error": event.last_error}


def _outbox_dead(args: argparse.Namespace) -> list[Any]:
    """Dead outbox events, filtered like letters (actor filters do not apply to events)."""
    from bootstrap import get_container

    if args.no_outbox or args.actor or getattr(args, "replayed", False):
        return []
    f = _filters(args)
    events = get_container().outbox_relay.list_dead(limit=args.limit)
    return [e for e in events if (f["older_than"] is None or e.created_at < f["older_than"])
            and (f["newer_than"] is None or e.created_at >= f["newer_than"])]


def _fallback_notice(service: Any) -> None:
    try:
        waiting = service.waiting_in_fallback()
    except Exception as exc:  # the notice must not hide the letters the store has
        print(f"(could not count letters in the fallback store: {exc})", file=sys.stderr)
        return
    if waiting:
        print(f"{waiting} dead letter(s) wait in the fallback store (the dead-letter store refused them); "
              "run `atelier dlq restore`", file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    from bootstrap import get_container

    service = get_container().dead_letters
    letters = service.list(limit=args.limit, **_filters(args))
    events = _outbox_dead(args)
    _fallback_notice(service)
    if args.json:
        for letter in letters:
            print(json.dumps(_letter_row(letter), default=str))
        for event in events:
            print(json.dumps(_event_row(event), default=str))
        return 0
    for letter in letters:
        replayed = f"  replayed {letter.replayed_at:%Y-%m-%dT%H:%M:%S}" if letter.replayed_at else ""
        print(f"{letter.id}  {letter.failed_at:%Y-%m-%dT%H:%M:%S}  {letter.actor}  {letter.reason}"
              f"({letter.attempts})  {letter.error_type.rsplit('.', 1)[-1]}: {letter.error[:120]}{replayed}")
    for event in events:
        print(f"{event.id}  {event.created_at:%Y-%m-%dT%H:%M:%S}  outbox:{event.type}  dead({event.attempts})  "
              f"{(event.last_error or '')[:120]}")
    if not letters and not events:
        print("no dead letters")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.errors import NotFound
    from domain.models import parse_id

    container = get_container()
    letter_id = parse_id(args.id, "dead letter id")
    try:
        row = _letter_row(container.dead_letters.get(letter_id))
    except NotFound:
        with container.uow() as uow:
            event = uow.outbox.get(letter_id)
        if event is None or not event.dead:
            raise NotFound(f"no dead letter or dead outbox event {letter_id}") from None
        row = _event_row(event)
    if args.json:
        print(json.dumps(row, default=str))
        return 0
    traceback = row.pop("traceback", None)
    for key, value in row.items():
        print(f"{key:>18}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")
    if traceback:
        print(f"\n{traceback}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import actors  # noqa: F401  (a replayed letter is sent with its actor's declared queue and options)
    from bootstrap import get_container
    from domain.errors import NotFound
    from domain.models import parse_id
    from domain.services.deadletters import AlreadyReplayed, CannotReplay

    container = get_container()
    service = container.dead_letters
    if args.ids:
        ids = [parse_id(i, "dead letter id") for i in args.ids]
    else:
        if not (args.actor or args.older_than or args.newer_than or args.all):
            raise SystemExit("dlq replay: give IDs, or a filter (--actor, --older-than, --newer-than), or --all")
        f = _filters(args)
        f["replayed"] = None if args.force else False
        ids = [letter.id for letter in service.list(limit=args.limit, **f)]
    failed = 0
    for letter_id in ids:
        try:
            message_id = service.replay(letter_id, force=args.force)
        except NotFound:
            # Not a message: maybe a dead outbox event, which the relay sends again.
            event = container.outbox_relay.retry(letter_id)
            print(f"{event.id} outbox event due again")
            continue
        except (AlreadyReplayed, CannotReplay) as exc:
            print(f"{letter_id} skipped: {exc}")
            failed += 1
            continue
        print(f"{letter_id} replayed as message {message_id}")
    if "message_sender" in container.__dict__:
        container.message_sender.broker.close()
    return 1 if failed and args.ids else 0


def cmd_purge(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.models import parse_id

    service = get_container().dead_letters
    if args.ids:
        ids = [parse_id(i, "dead letter id") for i in args.ids]
    else:
        if not (args.actor or args.older_than or args.newer_than or args.replayed or args.everything):
            raise SystemExit("dlq purge: give IDs, or a filter (--actor, --older-than, --newer-than, --replayed), "
                             "or --everything")
        f = _filters(args)
        f["replayed"] = True if args.replayed else None  # a filter purges replayed letters too
        ids = [letter.id for letter in service.list(limit=args.limit, **f)]
    print(f"purged {service.purge(ids)} dead letter(s)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from bootstrap import get_container

    moved, waiting = get_container().dead_letters.restore(limit=args.limit)
    print(f"restored {moved} dead letter(s) from the fallback store; {waiting} still there")
    return 0 if waiting == 0 else 1


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", help="only this actor's letters")
    p.add_argument("--older-than", type=age, metavar="AGE", help="failed more than AGE ago (30s, 15m, 2h, 7d)")
    p.add_argument("--newer-than", type=age, metavar="AGE", help="failed less than AGE ago")
    p.add_argument("--limit", type=int, default=1000)


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser("dlq", help="dead letters: list, show, replay, purge, restore").add_subparsers(
        dest="dlq_command", required=True)
    p = dlq.add_parser("list", help="dead letters (not yet replayed) and dead outbox events, newest first")
    _add_filters(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--replayed", action="store_true", help="only letters already replayed")
    which.add_argument("--all", action="store_true", help="replayed letters too")
    p.add_argument("--no-outbox", action="store_true", help="leave out dead outbox events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_list, limit=100)
    p = dlq.add_parser("show", help="one dead letter (or dead outbox event) in full, with its traceback")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = dlq.add_parser("replay", help="enqueue dead letters again: same arguments and correlation id, "
                                      "fresh retry count, dedup key kept")
    p.add_argument("ids", nargs="*", metavar="ID")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="every letter not yet replayed")
    p.add_argument("--force", action="store_true", help="replay letters that were replayed before")
    p.set_defaults(func=cmd_replay)
    p = dlq.add_parser("purge", help="delete dead letters")
    p.add_argument("ids", nargs="*", metavar="ID")
    _add_filters(p)
    p.add_argument("--replayed", action="store_true", help="only letters already replayed")
    p.add_argument("--everything", action="store_true", help="with no other filter: every letter")
    p.set_defaults(func=cmd_purge)
    p = dlq.add_parser("restore", help="move letters the store refused (kept in the fallback store) into it")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=cmd_restore)
