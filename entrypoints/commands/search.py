"""`atelier search ...` and `atelier reindex ...`: text-to-image search and re-embedding."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtime.jobs import report_progress


def _print_hits(hits: list[Any], as_json: bool) -> None:
    for hit in hits:
        if as_json:
            print(json.dumps({"image_id": hit.image_id, "score": round(hit.score, 6), **{
                k: hit.payload.get(k) for k in ("owner", "content_type", "created_at")}}))
        else:
            print(f"{hit.score:.4f}  {hit.image_id}")


def cmd_search(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.models import parse_id

    given = [x is not None for x in (args.query, args.image, args.like)]
    if sum(given) != 1:
        print("error: give one of: a text, --image FILE, --like IMAGE_ID", file=sys.stderr)
        return 2
    service = get_container().embeddings
    if args.query is not None:
        hits = service.search_text(args.query, args.limit, owner=args.owner)
    elif args.image is not None:
        hits = service.search_image(Path(args.image).read_bytes(), args.limit, owner=args.owner)
    else:
        hits = service.search_similar(parse_id(args.like, "image id"), args.limit, owner=args.owner)
    _print_hits(hits, args.json)
    return 0


def _date(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: Images per progress report (runtime.jobs.report_progress: recorded, and a cancel honoured, when
#: the reindex runs inside a job; a no-op from the command line).
REINDEX_BATCH = 100


def cmd_reindex(args: argparse.Namespace) -> int:
    """Send embed_image for every READY image (or the filtered ones), with a progress bar.

    On the stub broker there is no worker outside this process, so the images are embedded here
    (--inline does the same on any broker)."""
    from tqdm import tqdm

    from bootstrap import get_container
    from bootstrap.settings import get_settings

    container = get_container()
    ids = container.embeddings.reindex_candidates(owner=args.owner, created_from=args.since,
                                                  created_to=args.until, limit=args.limit)
    inline = args.inline or get_settings().broker_kind == "stub"
    if args.dry_run:
        print(f"{len(ids)} READY images would be {'embedded' if inline else 'enqueued'}")
        return 0
    bar = tqdm(total=len(ids), unit="image", desc="embedding" if inline else "enqueueing", file=sys.stderr,
               disable=args.quiet)
    failed: list[tuple[str, str]] = []
    if inline:
        service = container.embeddings

        def embed(image_id: str) -> None:
            try:
                service.embed_image(image_id)
            except Exception as exc:  # reported at the end; the others go on
                failed.append((image_id, f"{type(exc).__name__}: {exc}"))
            bar.update()

        batches = [ids[i:i + REINDEX_BATCH] for i in range(0, len(ids), REINDEX_BATCH)]

        # Several threads so the dynamic batcher has company (EMBED_BATCH_MAX_SIZE).
        with ThreadPoolExecutor(max(1, args.threads)) as pool:
            for n, batch in enumerate(batches):
                list(pool.map(embed, batch))
                report_progress((n + 1) / len(batches), f"embedded batch {n + 1}/{len(batches)}")
    else:
        import actors

        for start in range(0, len(ids), REINDEX_BATCH):
            for image_id in ids[start:start + REINDEX_BATCH]:
                actors.media.embed_image.send(image_id)
                bar.update()
            done = min(start + REINDEX_BATCH, len(ids))
            report_progress(done / len(ids), f"enqueued {done}/{len(ids)}")
    bar.close()
    for image_id, error in failed:
        print(f"failed {image_id}: {error}", file=sys.stderr)
    done = len(ids) - len(failed)
    print(f"{done} images {'embedded' if inline else 'enqueued to ' + actors.media.embed_image.queue_name}"
          + (f", {len(failed)} failed" if failed else ""))
    container.close()
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="find images by text, by an example image or by an image id")
    p.add_argument("query", nargs="?", help='text, e.g. "a red bicycle"')
    p.add_argument("--image", metavar="FILE", help="an example image file")
    p.add_argument("--like", metavar="IMAGE_ID", help="an embedded image: find the ones closest to it")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--owner", help="only this owner's images")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("reindex", help="embed READY images again (all, or a filter of them)")
    p.add_argument("--owner", help="only this owner's images")
    p.add_argument("--since", type=_date, metavar="ISO", help="created at or after (UTC unless given)")
    p.add_argument("--until", type=_date, metavar="ISO", help="created before (UTC unless given)")
    p.add_argument("--limit", type=int, help="at most this many, oldest first")
    p.add_argument("--inline", action="store_true", help="embed in this process instead of enqueueing")
    p.add_argument("--threads", type=int, default=8, help="threads for --inline")
    p.add_argument("--dry-run", action="store_true", help="only count")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reindex)


def demo_embeddings(broker: Any, container: Any, image_ids: list[str]) -> list[str]:
    """The embedded demo's embedding step, run while its in-process worker is up: relay the
    outbox (image.processed -> embed_image) and wait for the embeddings, then report them and a
    search by example. Without weights at hand it says so in one line and embeds nothing."""
    from domain.errors import ModelUnavailable

    lines: list[str] = []
    try:
        container.embedder.load()
    except ModelUnavailable as exc:
        return [f"embeddings: skipped, {exc}",
                "  (set CLIP_PRETRAINED to a checkpoint file, or HF_HUB_OFFLINE=0 to let open_clip download)"]
    relay = container.outbox_relay
    while relay.relay(5.0).more_due:
        pass
    import actors

    broker.join(actors.media.embed_image.queue_name, fail_fast=False)
    index = container.vector_index
    lines.append(f"embeddings: {index.count()} images in Qdrant ({index.where}, collection {index.collection}, "
                 f"model {container.embedder.model_id})")
    for image_id in image_ids:
        try:
            hits = container.embeddings.search_similar(image_id, limit=3)
        except Exception as exc:
            lines.append(f"  search --like {image_id}: {exc}")
            continue
        shown = ", ".join(f"{h.image_id[:8]} {h.score:.3f}" for h in hits)
        lines.append(f"  search --like {image_id[:8]}: {shown}")
        break
    return lines
