"""Embeddings per second: one model call per message against dynamic batching, same run.

    .venv/bin/python bench/embeddings.py [--images 48] [--rounds 2] [--threads 8] [--batch 16] [--no-ceiling]

The real ``embed_image`` actor runs on a Dramatiq worker with ``--threads`` threads (StubBroker,
in this process), with SQLite, the local object store and Qdrant local mode in a temp dir.
ViT-B-32 with random weights on the CPU (no download; the cost is the same as real weights).
Images are 12-megapixel JPEGs processed to thumbnails first; embedding reads the 512 thumbnail.

- one at a time: EMBED_BATCH_MAX_SIZE=1, every message calls the model on its own image (the
  threads' calls run concurrently).
- serialised (also printed): the same, with the model behind a lock, as a naive thread-safe
  wrapper would do: one single-image call at a time.
- batched: EMBED_BATCH_MAX_SIZE=--batch, EMBED_BATCH_MAX_WAIT_MS=--wait-ms: messages running at
  the same time share one model call.

Both sides use the same loaded model and torch's thread count (printed; --torch-threads sets it).
Rounds alternate the sides; the best round of each counts. The mean batch size counts the timed
rounds only (not the warm-up call).

The ceiling (skipped with --no-ceiling) measures the model alone on preprocessed tensors (no
decode, no batcher, no Dramatiq), in the same run: one call on a batch of --threads images against
--threads threads each calling it on one image. Batching cannot beat that ratio: it is what the
batched side can win at most, and it depends on the machine (cores, torch's threads, the CPU's
matrix units), so the target is relative to it: the batched pipeline's gain over one at a time
reaches at least 0.9 of the model's own. The first line says how many cores the process may use
and how many threads torch used, so a figure from a larger machine is read as such.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="Dramatiq worker threads")
    parser.add_argument("--batch", type=int, default=16, help="EMBED_BATCH_MAX_SIZE of the batched side")
    parser.add_argument("--wait-ms", type=float, default=50.0, help="EMBED_BATCH_MAX_WAIT_MS of the batched side")
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--database-url", help="default: a SQLite file in a temp dir")
    parser.add_argument("--direct", action="store_true",
                        help="the model part alone: --threads threads call the embedder on the thumbnails' bytes "
                             "(no Dramatiq, database, object store or Qdrant)")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip timing the model alone (a batch of --threads images against --threads concurrent "
                             "single-image calls: the most batching can win, and the target's reference)")
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)  # the default now
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atelier-bench-emb-"))
    os.environ.update({
        "BROKER_URL": "stub://", "DATABASE_URL": args.database_url or f"sqlite:///{work / 'atelier.db'}",
        "LOCAL_STORE_DIR": str(work / "objects"), "QDRANT_PATH": str(work / "qdrant"),
        "CLIP_MODEL": args.model, "CLIP_PRETRAINED": "random", "LOG_LEVEL": "ERROR",
        "CLIP_TORCH_THREADS": str(args.torch_threads),
    })
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("MINIO_ENDPOINT", None)
    os.environ.pop("QDRANT_URL", None)

    import dramatiq
    import torch

    import actors
    import adapters.clip as clip_module
    from adapters.clip import ClipEmbedder
    from adapters.sql.migrate import upgrade
    from bootstrap import Container, get_container, set_container
    from bootstrap.settings import load_settings
    from entrypoints.samples import make_photo

    settings = load_settings()
    upgrade(settings.database_url)
    loaded = clip_module.load_clip(args.model, "random", torch_threads=args.torch_threads)
    media = get_container().media
    photos = [make_photo(4000, 3000, seed=s) for s in range(min(args.images, 8))]
    ids = []
    for n in range(args.images):
        image = media.register_image(photos[n % len(photos)], "image/jpeg", owner="bench")
        media.process_image(image.id)
        ids.append(image.id)
    store = get_container().store
    thumbs = [store.get(max(media.get_image(i).thumbnails, key=lambda t: t.size).key) for i in ids]
    mode = "DIRECT (model part only): " if args.direct else ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {os.cpu_count()} logical cores, {usable} usable by this process; torch {torch.__version__}: "
          f"{torch.get_num_threads()} intra-op threads, {torch.get_num_interop_threads()} inter-op threads; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(mode + f"{args.images} READY images (12 MP originals, embedded from the 512 thumbnail); {args.model} random "
          f"weights on CPU; {args.threads} worker threads; torch threads {torch.get_num_threads()}; "
          f"batched: max {args.batch}, wait {args.wait_ms:g} ms")

    import dataclasses
    import threading

    serial = dataclasses.replace(loaded)
    model_lock = threading.Lock()

    def locked_encode(tensors):  # type: ignore[no-untyped-def]
        with model_lock:
            return loaded.encode_images(tensors)

    serial.encode_images = locked_encode  # type: ignore[method-assign]

    def run(max_batch: int, serialised: bool = False) -> tuple[float, list[int]]:
        container = Container(settings)
        imaging = container.imaging
        model = serial if serialised else loaded
        embedder = ClipEmbedder(lambda: model, lambda data, side: imaging.decode(data, longest_side=side)[0],
                                model_id=f"{args.model}/random", max_batch_size=max_batch,
                                max_wait=args.wait_ms / 1000)
        container.__dict__["embedder"] = embedder
        set_container(container)
        container.embeddings.embed_image(ids[0])  # warm-up: first calls allocate
        if embedder.batcher:
            embedder.batcher.batch_sizes = []  # count the timed batches only
        if args.direct:
            from concurrent.futures import ThreadPoolExecutor

            started = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(embedder.embed_image, thumbs))
            elapsed = time.perf_counter() - started
            sizes = list(embedder.batcher.batch_sizes) if embedder.batcher else [1] * len(ids)
            container.close()
            return len(ids) / elapsed, sizes
        worker = dramatiq.Worker(actors.broker, worker_threads=args.threads)
        worker.start()
        started = time.perf_counter()
        for image_id in ids:
            actors.media.embed_image.send(image_id)
        actors.broker.join(actors.media.embed_image.queue_name, fail_fast=True)
        worker.join()
        elapsed = time.perf_counter() - started
        worker.stop()
        assert container.vector_index.count() == len(ids)
        sizes = list(embedder.batcher.batch_sizes) if embedder.batcher else [1] * len(ids)
        container.close()
        return len(ids) / elapsed, sizes

    best = {"one": 0.0, "serial": 0.0, "batched": 0.0}
    batch_sizes: list[int] = []
    ratios: list[float] = []
    for r in range(args.rounds):
        rates = {}
        for name, size in (("one", 1), ("serial", 1), ("batched", args.batch)):
            rate, sizes = run(size, serialised=name == "serial")
            rates[name] = rate
            best[name] = max(best[name], rate)
            if name == "batched":
                batch_sizes += sizes
            print(f"  round {r + 1} {name:<8} {rate:6.2f} images/s")
        ratios.append(rates["batched"] / rates["one"])
    mean_batch = sum(batch_sizes) / max(len(batch_sizes), 1)
    ratios.sort()
    median = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(ratios[len(ratios) // 2 - 1:][:2]) / 2
    print()
    print("| figure | one at a time | batched | ratio |")
    print("|---|---|---|---|")
    print(f"| images/s (best round) | {best['one']:.2f} | {best['batched']:.2f} | "
          f"{best['batched'] / best['one']:.2f}x |")
    print(f"| median of the rounds' ratios | | | {median:.2f}x |")
    print(f"| serialised model calls, best round | {best['serial']:.2f} | {best['batched']:.2f} | "
          f"{best['batched'] / best['serial']:.2f}x |")
    print(f"| mean batch size (all batched rounds) | 1 | {mean_batch:.1f} | |")
    if args.ceiling:
        limit = ceiling(loaded, thumbs, args.threads, Container(settings).imaging)
        gain, gain_median = best["batched"] / best["one"], median
        verdict = "met" if gain / limit >= 0.9 else "NOT met"
        print(f"| batched pipeline's gain / the model's batching ceiling (target >= 0.9) | best rounds {gain:.2f}x "
              f"/ {limit:.2f}x | median {gain_median:.2f}x / {limit:.2f}x | **{gain / limit:.2f}** ({verdict}); "
              f"median {gain_median / limit:.2f} |")
    print(f"machine: {usable} usable cores, torch {torch.get_num_threads()} threads; load average after: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


def ceiling(loaded, thumbs, threads: int, imaging) -> float:  # type: ignore[no-untyped-def]
    """The model alone on preprocessed tensors: one batch of ``threads`` against ``threads``
    concurrent single-image calls, alternating, 4 repetitions of 4 batches' worth of images."""
    from concurrent.futures import ThreadPoolExecutor

    tensors = [loaded.preprocess(imaging.decode(data, longest_side=loaded.image_size)[0])
               for data in thumbs[:threads]]
    per_rep = 4 * threads
    best = {"batch": 0.0, "concurrent": 0.0}
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda t: loaded.encode_images([t]), tensors))  # warm-up
        loaded.encode_images(tensors)
        for _ in range(4):
            started = time.perf_counter()
            for _ in range(4):
                loaded.encode_images(tensors)
            best["batch"] = max(best["batch"], per_rep / (time.perf_counter() - started))
            started = time.perf_counter()
            list(pool.map(lambda n: loaded.encode_images([tensors[n % threads]]), range(per_rep)))
            best["concurrent"] = max(best["concurrent"], per_rep / (time.perf_counter() - started))
    print(f"| model alone, best of 4: {threads} concurrent single-image calls | {best['concurrent']:.2f} | "
          f"batch of {threads}: {best['batch']:.2f} | {best['batch'] / best['concurrent']:.2f}x |")
    return best["batch"] / best["concurrent"]


if __name__ == "__main__":
    sys.exit(main())
