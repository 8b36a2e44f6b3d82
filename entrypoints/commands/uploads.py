"""`atelier uploads ...` and `atelier gc`: chunked uploads from the shell, garbage collection."""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import re
from pathlib import Path
from typing import Any

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """'5M', '512k', '1048576' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (e.g. 5M, 512k, 1048576)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def cmd_create(args: argparse.Namespace) -> int:
    """Split a file into chunks, upload and register each, then send merge_upload."""
    from bootstrap import get_container

    path = Path(args.file)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    total = max(1, -(-size // args.chunk_size))
    service = get_container().uploads
    upload = service.create_upload(
        path.name, total, args.content_type or mimetypes.guess_type(path.name)[0], owner=args.owner,
        expected_size=size, expected_sha256=None if args.no_verify else digest.hexdigest())
    with path.open("rb") as fh:
        for index in range(total):
            service.upload_chunk(upload.id, index, fh.read(args.chunk_size))
    if not args.no_merge:
        import actors

        actors.uploads.merge_upload.send(upload.id)
    print(upload.id)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    import actors
    from domain.models import parse_id

    for upload_id in args.upload_ids:
        actors.uploads.merge_upload.send(parse_id(upload_id, "upload id"))
    return 0


def _show(service: Any, upload_id: str) -> dict[str, Any]:
    from domain.models import UploadStatus

    upload = service.get_upload(upload_id)
    chunks = service.list_chunks(upload_id)
    return {
        "id": upload.id, "filename": upload.filename, "content_type": upload.content_type,
        "status": upload.status.value, "failure_reason": upload.failure_reason,
        "total_chunks": upload.total_chunks, "chunks_registered": len(chunks),
        "expected_size": upload.expected_size, "expected_sha256": upload.expected_sha256,
        "size": upload.size, "sha256": upload.sha256, "key": upload.final_key, "image_id": upload.image_id,
        "created_at": upload.created_at.isoformat(), "updated_at": upload.updated_at.isoformat(),
        "completed_at": upload.completed_at.isoformat() if upload.completed_at else None,
        "download_url": service.download_url(upload.id) if upload.status is UploadStatus.COMPLETED else None,
    }


def cmd_show(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.models import parse_id

    info = _show(get_container().uploads, parse_id(args.upload_id, "upload id"))
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['id']}  {info['status']}  {info['filename']}  "
          f"{info['chunks_registered']}/{info['total_chunks']} chunks")
    for name in ("failure_reason", "size", "sha256", "key", "image_id", "download_url"):
        if info[name] is not None:
            print(f"  {name}: {info[name]}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Collect abandoned uploads now, in this process (or --send the actor to the workers)."""
    if args.send:
        import actors

        message = actors.uploads.collect_abandoned_uploads.send()
        print(f"sent collect_abandoned_uploads ({message.message_id})")
        return 0
    from bootstrap import get_container

    print(f"collected {get_container().uploads.collect_abandoned()} abandoned uploads")
    return 0


def register(subparsers: Any) -> None:
    uploads = subparsers.add_parser("uploads", help="chunked uploads").add_subparsers(
        dest="uploads_command", required=True)
    p = uploads.add_parser("create", help="upload a file in chunks and send merge_upload; prints the id")
    p.add_argument("file")
    p.add_argument("--chunk-size", type=parse_size, default=parse_size("5M"),
                   help="bytes per chunk, e.g. 5M (server-side merge needs 5M or more; default 5M)")
    p.add_argument("--content-type", default=None, help="default: guessed from the file name")
    p.add_argument("--owner", default=None)
    p.add_argument("--no-verify", action="store_true", help="do not send the sha256 for verification")
    p.add_argument("--no-merge", action="store_true", help="register the chunks but do not send merge_upload")
    p.set_defaults(func=cmd_create)
    p = uploads.add_parser("merge", help="send merge_upload for uploads")
    p.add_argument("upload_ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_merge)
    p = uploads.add_parser("show", help="print an upload's status and a fresh download URL")
    p.add_argument("upload_id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("gc", help="collect abandoned uploads now (GC_RETENTION_HOURS, GC_BATCH_SIZE)")
    p.add_argument("--send", action="store_true", help="send collect_abandoned_uploads to the workers instead")
    p.set_defaults(func=cmd_gc)
