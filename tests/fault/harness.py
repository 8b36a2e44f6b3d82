"""What the fault scenarios share: worker and producer processes, the effects tally, the results table.

Every scenario measures the same figures against the promise "nothing lost, no effect twice":

- messages: what the producer saw succeed (a send that returned; a chat message whose create
  committed);
- lost: of those, how many never had their effect;
- duplicate effects: executions beyond the first for one effect (the effect row exists once by its
  key, so this counts what a handler without that guard would have done twice; for chat, requests a
  channel accepted more than once for one delivery);
- recovery: seconds from the end of the fault (the kill, the server back) until the last effect ran.

Each test records its row (``record``) before asserting, so a failing scenario still shows its
figures; the suite prints them as one table at the end of the run (tests/fault/conftest.py) and
writes it to var/fault-table.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from tests import services

MODULE = "tests.fault.fault_actors"

#: Rows of this session, in run order (the conftest prints them).
RESULTS: list[Row] = []


@dataclass
class Row:
    scenario: str
    broker: str
    messages: int
    lost: int
    duplicates: int
    recovery_s: float | None
    note: str = ""
    outcome: str = "?"  # set by the conftest from the test's result


def record(scenario: str, broker: str, *, messages: int, lost: int, duplicates: int,
           recovery_s: float | None, note: str = "") -> Row:
    row = Row(scenario, broker, messages, lost, duplicates,
              None if recovery_s is None else round(recovery_s, 1), note)
    RESULTS.append(row)
    line = json.dumps(asdict(row))
    print(f"FAULT {line}", flush=True)
    path = Path(os.environ.get("FAULT_RESULTS", services.ROOT / "var" / "fault-results.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(line + "\n")
    return row


def table(rows: list[Row]) -> str:
    lines = ["| scenario | broker | messages | lost | duplicate effects | recovery (s) | result | note |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        recovery = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        lines.append(f"| {r.scenario} | {r.broker} | {r.messages} | {r.lost} | {r.duplicates} | {recovery} | "
                     f"{r.outcome} | {r.note} |")
    return "\n".join(lines)


# --- processes ---

class Worker(services.WorkerProcess):
    """A `dramatiq actors tests.fault.fault_actors --processes 1` command, as one container runs
    it: its own process group (the dramatiq main process and its worker process)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, threads: int = 4, modules: tuple[str, ...] = (MODULE,)):
        super().__init__(env, log_path, processes=1, threads=threads, modules=modules)

    def pids(self) -> set[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def kill9(self) -> float:
        """SIGKILL to the whole command (main and worker process), as the OOM killer or a lost node
        would: nothing is acknowledged, requeued or written on the way out. Returns the time."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        at = time.time()
        self.proc.wait(10)
        return at

    def stop(self, timeout: float = 30) -> int:
        code = super().stop(timeout)
        return code


class Producer:
    """``python -m tests.fault.fault_actors send`` in the background; ``sent()`` reads what it saw
    succeed so far."""

    def __init__(self, env: dict[str, str], tmp: Path, count: int, *, rate: float = 0.0, prefix: str = "k",
                 duplicate_every: int = 0, deadline: float = 120.0) -> None:
        self.out = tmp / f"sent-{prefix}.txt"
        self.log = tmp / f"producer-{prefix}.log"
        args = [sys.executable, "-m", MODULE, "send", str(self.out), str(count), "--rate", str(rate), "--prefix",
                prefix, "--duplicate-every", str(duplicate_every), "--deadline", str(deadline)]
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, env=env, cwd=services.ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def sent(self) -> dict[str, list[str]]:
        """key -> message ids the producer saw sent."""
        found: dict[str, list[str]] = {}
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                key, _, message_id = line.partition(" ")
                if message_id:
                    found.setdefault(key, []).append(message_id)
        return found

    def wait(self, timeout: float = 180) -> dict:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()
        output = self.log.read_text(errors="replace")
        assert self.proc.returncode == 0, f"producer failed:\n{output[-3000:]}"
        return json.loads(output.strip().splitlines()[-1])


# --- the effects ---

def effects_dsn(url: str) -> str:
    """A psycopg conninfo from a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_effects_tables(dsn: str) -> None:
    from tests.fault.fault_actors import SCHEMA

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


@dataclass
class Tally:
    """The effects table against what the producer saw sent."""

    sent: dict[str, list[str]]
    effects: dict[str, datetime]  # key -> when its effect row was written
    runs: dict[str, list[tuple[int, datetime]]] = field(default_factory=dict)  # key -> [(pid, at)]

    @classmethod
    def read(cls, dsn: str, sent: dict[str, list[str]]) -> Tally:
        with psycopg.connect(dsn) as conn:
            effects = dict(conn.execute("SELECT key, at FROM fault_effects").fetchall())
            runs: dict[str, list[tuple[int, datetime]]] = {}
            for key, pid, at in conn.execute("SELECT key, pid, at FROM fault_runs ORDER BY id"):
                runs.setdefault(key, []).append((pid, at))
        return cls(sent, effects, runs)

    @property
    def lost(self) -> set[str]:
        return set(self.sent) - set(self.effects)

    @property
    def duplicates(self) -> int:
        return sum(len(r) - 1 for r in self.runs.values())

    def duplicate_keys(self) -> dict[str, list[tuple[int, datetime]]]:
        return {k: r for k, r in self.runs.items() if len(r) > 1}

    def last_run_at(self) -> float | None:
        times = [at for r in self.runs.values() for _, at in r]
        return max(times).timestamp() if times else None

    def pids(self) -> Counter[int]:
        return Counter(pid for r in self.runs.values() for pid, _ in r)


def count_effects(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM fault_effects").fetchone()[0]


def wait_all_effects(dsn: str, producer: Producer, *, timeout: float, what: str = "every effect") -> bool:
    """Poll until every key the producer saw sent has its effect; False at the deadline (the test
    records its figures before failing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = producer.sent()
        if producer.proc.poll() is not None and sent and count_effects(dsn) >= len(sent):
            with psycopg.connect(dsn) as conn:
                done = {k for (k,) in conn.execute("SELECT key FROM fault_effects")}
            if set(sent) <= done:
                return True
        time.sleep(0.25)
    return False


def wait_stable(dsn: str, *, seconds: float, timeout: float) -> int:
    """Poll until the number of effects has not changed for ``seconds``; that number."""
    deadline = time.monotonic() + timeout
    last, since = count_effects(dsn), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = count_effects(dsn)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            break
    return last
