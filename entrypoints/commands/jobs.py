"""`atelier jobs show|list|cancel` and `atelier workers`: the JSON GET /jobs and GET /workers give."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _print(body: Any) -> None:
    print(json.dumps(body, indent=2))


def _service():  # type: ignore[no-untyped-def]
    from bootstrap import get_container

    return get_container().jobs


def _job(message_id: str, view: dict[str, Any] | None) -> int:
    if view is None:
        print(f"no job {message_id} (unknown, or older than JOBS_RETENTION_S)", file=sys.stderr)
        return 1
    _print(view)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    return _job(args.message_id, _service().show(args.message_id))


def cmd_list(args: argparse.Namespace) -> int:
    try:
        _print({"jobs": _service().list(actor=args.actor, status=args.status, limit=args.limit)})
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    return _job(args.message_id, _service().cancel(args.message_id))


def cmd_workers(args: argparse.Namespace) -> int:
    _print({"workers": _service().workers()})
    return 0


def register(subparsers: Any) -> None:
    jobs = subparsers.add_parser("jobs", help="follow, list and cancel messages by id").add_subparsers(
        dest="jobs_command", required=True)
    p = jobs.add_parser("show", help="a job's record, as GET /jobs/{id}")
    p.add_argument("message_id")
    p.set_defaults(func=cmd_show)
    p = jobs.add_parser("list", help="the most recent jobs, as GET /jobs")
    p.add_argument("--actor")
    p.add_argument("--status", help="queued, delayed, running, retrying, done, failed, skipped or cancelled")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)
    p = jobs.add_parser("cancel", help="cancel a job: a waiting one never runs, a running one stops at its next "
                                       "progress point")
    p.add_argument("message_id")
    p.set_defaults(func=cmd_cancel)
    p = subparsers.add_parser("workers", help="the worker processes and their heartbeats, as GET /workers")
    p.set_defaults(func=cmd_workers)
