"""The `atelier` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

#: Modules that add their own subcommands: each has register(subparsers).
COMMAND_MODULES: list[str] = ["entrypoints.commands.ops", "entrypoints.commands.outbox",
                              "entrypoints.commands.uploads",  # --- uploads ---
                              "entrypoints.commands.messages", "entrypoints.commands.mock_channels",  # messaging
                              "entrypoints.commands.dlq", "entrypoints.commands.jobs",  # --- middleware ---
                              "entrypoints.commands.search"]  # --- media: embeddings and search ---

#: A folder's files offered to the demo: these suffixes (so a broken .jpg is reported, not skipped)
#: and any file whose content is an image. The content, never the name, decides the format.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}


def _media_type(data: bytes) -> str | None:
    from adapters.imaging import sniff_media_type

    return sniff_media_type(data)


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with path.open("rb") as f:
        return _media_type(f.read(1 << 16)) is not None


def cmd_migrate(args: argparse.Namespace) -> int:
    from adapters.sql.migrate import upgrade
    from bootstrap.settings import get_settings

    upgrade(get_settings().database_url)
    print("migrations applied")
    return 0


def _demo_inputs(folder: str | None, workdir: Path) -> list[Path]:
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.is_file() and _looks_like_image(p))
        if not paths:
            raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        return paths
    from entrypoints.samples import make_image

    gen = workdir / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    samples = {
        "landscape.jpg": make_image(1600, 1000, seed=1, make="Atelier", model="Demo Cam"),
        "rotated-exif.jpg": make_image(1200, 800, seed=2, orientation=6),
        "transparent.png": make_image(900, 900, seed=3, fmt="PNG", mode="RGBA"),
        "not-an-image.jpg": b"this is text, not a JPEG\n",
    }
    for name, data in samples.items():
        (gen / name).write_bytes(data)
    return [gen / name for name in samples]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run real actors on the embedded default: StubBroker, SQLite, a local directory."""
    workdir = Path(args.workdir).resolve()
    os.environ["BROKER_URL"] = "stub://"
    os.environ.pop("MINIO_ENDPOINT", None)
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'atelier.db'}")
    os.environ.setdefault("LOCAL_STORE_DIR", str(workdir / "objects"))
    os.environ.setdefault("LOG_LEVEL", "CRITICAL")  # the demo prints its own report
    # --- media: embeddings and search ---
    os.environ.setdefault("QDRANT_PATH", str(workdir / "qdrant"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a 600 MB download behind a demo's back

    from adapters.sql.migrate import upgrade
    from bootstrap.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)

    import dramatiq

    import actors
    from bootstrap import get_container

    inputs = _demo_inputs(args.folder, workdir)
    media = get_container().media
    worker = dramatiq.Worker(actors.broker, worker_threads=args.threads)
    worker.start()
    started = time.perf_counter()
    try:
        sent = []
        for path in inputs:
            data = path.read_bytes()
            image = media.register_image(data, _media_type(data), owner="demo")
            sent.append((path, image.id))
        # Registering is all a producer does; the outbox relay sends process_image for each.
        while get_container().outbox_relay.relay(5.0).more_due:
            pass
        actors.broker.join(actors.media.process_image.queue_name, fail_fast=False)
        worker.join()
        # --- media: embeddings and search ---
        from entrypoints.commands.search import demo_embeddings

        embedding_report = demo_embeddings(actors.broker, get_container(), [i for _, i in sent])
        worker.join()
    finally:
        worker.stop()
    elapsed = time.perf_counter() - started

    store_root = Path(settings.local_store_dir).resolve()
    print(f"atelier demo: {len(sent)} images in {elapsed:.2f}s "
          f"(database {settings.database_url}, objects under {store_root})")
    for path, image_id in sent:
        image = media.get_image(image_id)
        print(f"\n{path.name}  id={image.id}  status={image.status.value}")
        if image.failure_reason:
            print(f"  reason: {image.failure_reason}")
        if image.metadata:
            m = image.metadata
            print(f"  original: {m.get('format')} {m.get('width')}x{m.get('height')} {m.get('mode')}")
        for t in image.thumbnails:
            print(f"  {t.size:>4}px  {t.width}x{t.height} {t.format:<4} {t.byte_size:>7} B  "
                  f"{store_root / t.key}")
    # --- media: embeddings and search ---
    print("\n" + "\n".join(embedding_report))
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_images_add(args: argparse.Namespace) -> int:
    """Producer: store originals and record them PENDING, each with its image.uploaded event; the
    outbox routes those to process_image. Prints each id on stdout, then one line on stderr.

    It relays the outbox once (unless --no-relay) so processing starts without waiting for the
    scheduler's relay; if the broker is down the images stay registered and a later relay sends
    them. Exit 0 once every image is registered, even then: a non-zero exit would invite running
    the command again, which would register the same files again as new images."""
    import actors  # noqa: F401  (declares process_image on the broker the relay sends to)
    from bootstrap import get_container

    container = get_container()
    registered = 0
    failed = 0
    for number, name in enumerate(args.files):
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"error: {name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            image = container.media.register_image(data, _media_type(data), args.owner)
        except Exception as exc:  # the database or the object store: the next files would fail too
            print(f"error: {name}: not registered: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  file=sys.stderr)
            failed += len(args.files) - number
            break
        print(image.id, flush=True)
        registered += 1
    if failed:
        # Those registered are sent all the same (on stub:// nothing else would run them); the
        # failure is the last line and the exit status.
        if registered and not args.no_relay:
            try:
                _send_processing(container, registered)
            except Exception as exc:  # the database that failed a file may fail this too
                print(f"processing not sent yet: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                      file=sys.stderr)
        print(f"error: {failed} of {_plural(len(args.files), 'image')} not registered", file=sys.stderr)
        return 1
    if args.no_relay:
        print(f"registered {_plural(registered, 'image')}; the outbox relay sends their processing",
              file=sys.stderr)
        return 0
    return _send_processing(container, registered)


def _send_processing(container: Any, registered: int) -> int:
    """Relay the outbox once (or, on stub://, run the work here); one line on stderr; exit 0."""
    if container.settings.broker_kind == "stub":
        # An in-process broker: what the relay hands it would die with this command. Run it here.
        return _process_here(container, registered)
    try:
        stats = container.outbox_relay.relay(container.settings.outbox_relay_budget_ms / 1000)
        problem = f"broker unreachable: {stats.errors[-1]}" if stats.broker_down else None
    except Exception as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    if problem:
        print(f"registered {_plural(registered, 'image')}; processing not sent yet ({problem}); the outbox "
              f"relay sends it once that is back", file=sys.stderr)
    else:
        print(f"registered {_plural(registered, 'image')}; processing sent", file=sys.stderr)
    return 0


def _process_here(container: Any, registered: int) -> int:
    """The embedded default (BROKER_URL=stub://): relay and run the work in this process, as the
    demo does, so the images end READY or FAILED before the command returns."""
    import dramatiq

    import actors

    worker = dramatiq.Worker(actors.broker, worker_threads=2)
    worker.start()
    try:
        while container.outbox_relay.relay(container.settings.outbox_relay_budget_ms / 1000).more_due:
            pass
        actors.broker.join(actors.media.process_image.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    print(f"registered {_plural(registered, 'image')}; processed here (BROKER_URL is stub://)", file=sys.stderr)
    return 0


def cmd_images_show(args: argparse.Namespace) -> int:
    import json

    from bootstrap import get_container
    from domain.models import parse_id

    image = get_container().media.get_image(parse_id(args.image_id, "image id"))
    print(json.dumps({
        "id": image.id, "content_type": image.content_type, "status": image.status.value,
        "failure_reason": image.failure_reason,
        "metadata": image.metadata,
        "thumbnails": [t.__dict__ for t in image.thumbnails],
    }, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply database migrations (DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("demo", help="run the thumbnail job on the embedded default, no servers needed")
    p.add_argument("folder", nargs="?", help="folder of images (default: generate a few)")
    p.add_argument("--workdir", default="var/demo", help="where the SQLite file and objects go")
    p.add_argument("--threads", type=int, default=2, help="worker threads")
    p.set_defaults(func=cmd_demo)

    images = sub.add_parser("images", help="register and inspect images").add_subparsers(
        dest="images_command", required=True)
    p = images.add_parser("add", help="register images (the outbox sends process_image for each)")
    p.add_argument("files", nargs="+")
    p.add_argument("--owner", default=None)
    p.add_argument("--no-relay", action="store_true",
                   help="only register: leave sending process_image to the scheduler's outbox relay")
    p.set_defaults(func=cmd_images_add)
    p = images.add_parser("show", help="print an image's status, metadata and thumbnails")
    p.add_argument("image_id")
    p.set_defaults(func=cmd_images_show)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bootstrap.settings import ConfigError
    from domain.errors import DomainError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        # get_settings already printed the line naming the variable.
        return exc.code if isinstance(exc.code, int) else 2
    except DomainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
