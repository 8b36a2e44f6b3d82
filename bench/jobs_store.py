"""What a job record costs Redis itself: the time Redis spends per record in atelier's write script
(the order rules: read order and status, write, expire, index), against a baseline that writes the
same fields with no rules (HSET, PEXPIRE and ZADD per record, pipelined), on a private Redis of
this bench's own (its command statistics are reset, which the shared one must not be).

Each side writes N jobs twice, as the system does: the producer's "queued" record, then the
worker's final update; in chunks of the store's CHUNK. The figure is Redis's own time per record
(INFO commandstats: the script calls' usec, the baseline's commands' usec), the median over rounds; the ratio is the
script's over the baseline's. Redis runs on the same cores as the workers, so this time is taken
from them.

    .venv/bin/python bench/jobs_store.py [jobs] [rounds]    (from the checkout root)
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from worker_latency import private_redis  # noqa: E402

from adapters.state.jobs import CHUNK, RedisJobStore, _strings  # noqa: E402


def updates(n: int) -> tuple[list, list]:
    now = int(time.time() * 1000)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    # As the Jobs middleware puts them: every value text.
    queued = [(m, now * 8, {"actor": "count", "queue": "bench", "status": "queued", "enqueued_at": str(now),
                            "next_attempt_at": "", "correlation_id": uuid.uuid4().hex}) for m in ids]
    final = [(m, (now + 5) * 8 + 4, {"actor": "count", "queue": "bench", "status": "done", "attempts": "1",
                                     "started_at": str(now + 3), "enqueued_at": str(now),
                                     "correlation_id": uuid.uuid4().hex, "finished_at": str(now + 5)}) for m in ids]
    return queued, final


def server_usec(client: redis.Redis, *, scripts: bool = False) -> float:
    """Redis's time in commands since the reset; with ``scripts``, in script calls only (the
    commands a script runs are counted in their own lines too)."""
    stats = client.info("commandstats")
    if scripts:
        return sum(stat["usec"] for name, stat in stats.items() if name.startswith("cmdstat_eval"))
    return sum(stat["usec"] for stat in stats.values())


def script_side(client: redis.Redis, batches: tuple[list, list]) -> float:
    store = RedisJobStore(client, f"atelier:b{uuid.uuid4().hex[:6]}:jobs:", retention_s=3600)
    client.config_resetstat()
    for batch in batches:
        for i in range(0, len(batch), CHUNK):
            store.write(batch[i:i + CHUNK])
    return server_usec(client, scripts=True)


def baseline_side(client: redis.Redis, batches: tuple[list, list]) -> float:
    ns = f"atelier:b{uuid.uuid4().hex[:6]}:jobs:"
    client.config_resetstat()
    for batch in batches:
        for i in range(0, len(batch), CHUNK):
            pipe = client.pipeline(transaction=False)
            now = int(time.time() * 1000)
            for mid, order, fields in batch[i:i + CHUNK]:
                pipe.hset(ns + "j:" + mid, mapping={"order": str(order), **_strings(fields)})
                pipe.pexpire(ns + "j:" + mid, 3_600_000)
            pipe.zadd(ns + "index", {mid: now for mid, _, _ in batch[i:i + CHUNK]})
            pipe.execute()
    return server_usec(client)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = private_redis(Path(tmp))
        client = redis.Redis.from_url(url)
        try:
            sides: dict[str, list[float]] = {"baseline (no rules)": [], "atelier script": []}
            for r in range(rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    client.flushall()
                    batches = updates(n)
                    run = baseline_side if name.startswith("baseline") else script_side
                    sides[name].append(run(client, batches) / (2 * n))
        finally:
            client.close()
            proc.terminate()
            proc.wait(10)
    print(f"Redis time per record, {n} jobs x 2 records, {rounds} rounds (median, min):")
    for name, values in sides.items():
        print(f"  {name:22s} {statistics.median(values):6.2f} us   {min(values):6.2f} us")
    base, ours = (statistics.median(v) for v in sides.values())
    print(f"script / baseline: {ours / base:.2f}")


if __name__ == "__main__":
    main()
