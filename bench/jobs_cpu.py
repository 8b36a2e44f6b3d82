"""Where the cost of job records goes, as users run the workers: the CPU time per message of each
process on the machine (the worker processes, Redis, RabbitMQ, the rest), JOBS_ENABLED false
against true, with bench/jobs_workers.py's set-up (real `dramatiq bench.latency_worker`
processes with default options, a counting actor with BENCH_WORK_MS of work, N messages queued
before the worker starts, dedup off). CPU is read from /proc (utime + stime) at the 10th and the
90th percent of N, so the worker's start-up and tail are left out. Linux only.

    .venv/bin/python bench/jobs_cpu.py [messages] [rounds] [redis|rabbitmq]    (from the checkout root)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import redis  # noqa: E402
from jobs_workers import measure  # noqa: E402
from worker_latency import REDIS_URL  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = {"redis-server": "redis", "beam.smp": "rabbitmq"}


def cpu_by_group(session: int) -> dict[str, float]:
    """CPU seconds used so far by each group: the worker (its session), Redis, RabbitMQ, other."""
    out: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        group = "worker" if int(fields[3]) == session else GROUPS.get(comm, "other")
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def run(kind: str, side: str, n: int, tmp: Path, state: redis.Redis) -> tuple[float, dict[str, float]]:
    """(messages a second, CPU µs per message by group) between the 10th and the 90th percent of n."""
    (t0, c0), (t1, c1) = measure(kind, side, n, tmp, state, cpu_by_group)
    count = n * 9 // 10 - n // 10
    return count / (t1 - t0), {g: (c1.get(g, 0.0) - c0.get(g, 0.0)) / count * 1e6 for g in c1}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kinds = sys.argv[3:] or ["redis", "rabbitmq"]
    state = redis.Redis.from_url(REDIS_URL)
    print(f"CPU µs per message by process, {n} messages per run, {rounds} rounds (median), dedup off")
    print(f"{'broker':<9} {'jobs':<4} {'msg/s':>6} {'worker':>7} {'redis':>6} {'rabbitmq':>9} {'other':>6} "
          f"{'total':>6}")
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in kinds:
            results: dict[str, list[tuple[float, dict[str, float]]]] = {"off": [], "on": []}
            for r in range(rounds):
                for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    results[side].append(run(kind, side, n, Path(tmpdir), state))
            medians = {}
            for side, runs in results.items():
                rate = statistics.median(rate for rate, _ in runs)
                cpu = {g: statistics.median(c.get(g, 0.0) for _, c in runs)
                       for g in ("worker", "redis", "rabbitmq", "other")}
                medians[side] = cpu
                print(f"{kind:<9} {side:<4} {rate:6.0f} {cpu['worker']:7.0f} {cpu['redis']:6.0f} "
                      f"{cpu['rabbitmq']:9.0f} {cpu['other']:6.0f} {sum(cpu.values()):6.0f}")
            on, off = medians["on"], medians["off"]
            print(f"{kind:<9} jobs on / off: worker CPU {on['worker'] / off['worker']:.2f}, "
                  f"all processes {sum(on.values()) / sum(off.values()):.2f}")
    state.close()


if __name__ == "__main__":
    main()
