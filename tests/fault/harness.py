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
#: Background processes a test started; the conftest kills those still running after each test,
#: so a test that fails half-way leaves no producer sending on.
STARTED: list[subprocess.Popen[bytes]] = []


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
           recovery_s: float | None, note: str = "", ok: bool | None = None) -> Row:
    """One row of the table. ``ok``: whether this row's promise held, when a test records several
    rows (else the test's own result is the row's)."""
    row = Row(scenario, broker, messages, lost, duplicates,
              None if recovery_s is None else round(recovery_s, 1), note,
              "?" if ok is None else "pass" if ok else "FAIL")
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
    for r in sorted(rows, key=lambda r: r.scenario.split(" ", 1)[0]):
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

    def start(self) -> Worker:
        super().start()
        assert self.proc is not None
        STARTED.append(self.proc)
        return self

    def pids(self) -> set[int]:
        """The processes of this command's process group (read from /proc: no procps needed)."""
        assert self.proc is not None
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == self.proc.pid:  # pgrp (fields after "pid (comm)": state, ppid, pgrp)
                found.add(int(stat.parent.name))
        return found

    def kill9(self) -> float:
        """SIGKILL to the whole command (main and worker process), as the OOM killer or a lost node
        would: nothing is acknowledged, requeued or written on the way out. Returns the time."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        at = time.time()
        self.proc.wait(10)
        return at



class Producer:
    """``python -m tests.fault.fault_actors send`` in the background; ``sent()`` reads what it saw
    succeed so far."""

    def __init__(self, env: dict[str, str], tmp: Path, count: int, *, rate: float = 0.0, prefix: str = "k",
                 duplicate_every: int = 0, deadline: float = 120.0, name: str = "effects",
                 delay_ms: int | None = None) -> None:
        self.out = tmp / f"{name}.txt"
        self.log = tmp / f"{name}-producer.log"
        args = [sys.executable, "-m", MODULE, "send", str(self.out), str(count), "--rate", str(rate), "--prefix",
                prefix, "--duplicate-every", str(duplicate_every), "--deadline", str(deadline)]
        if delay_ms is not None:
            args += ["--delay-ms", str(delay_ms)]
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, env=env, cwd=services.ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        STARTED.append(self.proc)

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


def all_sent(*producers: Producer) -> dict[str, list[str]]:
    """key -> message ids, over several producers."""
    found: dict[str, list[str]] = {}
    for producer in producers:
        for key, ids in producer.sent().items():
            found.setdefault(key, []).extend(ids)
    return found


def count_effects(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM fault_effects").fetchone()[0]


def wait_all_effects(dsn: str, *producers: Producer, timeout: float) -> bool:
    """Poll until every key the producers saw sent has its effect; False at the deadline (the test
    records its figures before failing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = all_sent(*producers)
        if all(p.proc.poll() is not None for p in producers) and sent and count_effects(dsn) >= len(sent):
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


# --- chat: the mock channels, the scheduler (outbox relay), the chat producer ---

class MockChannelsServer:
    """The mock-channels dev server (entrypoints/devtools/mock_channels.py) in a thread of the test."""

    def __init__(self) -> None:
        import threading

        from entrypoints.devtools.mock_channels import MockChannels, make_server

        self.state = MockChannels()
        self.server = make_server("127.0.0.1", 0, self.state)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        """The channel settings of a worker sending to this mock."""
        return {"WHATSAPP_BASE_URL": f"{self.url}/whatsapp", "WHATSAPP_TOKEN": "fault-token",
                "WHATSAPP_PHONE_NUMBER_ID": "100200300", "INSTAGRAM_BASE_URL": f"{self.url}/instagram",
                "INSTAGRAM_TOKEN": "fault-token"}

    def control(self, **body: object) -> None:
        self.state.control(dict(body))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.state.close()


class Scheduler:
    """`python -m schedules` (the periodic ticks and the outbox relay loop), as deployed."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "schedules"], env=env, cwd=services.ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        STARTED.append(self.proc)
        services.wait_for(lambda: "scheduler started" in self.output() or self.proc.poll() is not None,
                          timeout=60, message="scheduler start")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class ChatProducer:
    """``python -m tests.fault.fault_actors chat`` in the background."""

    def __init__(self, env: dict[str, str], tmp: Path, count: int, *, rate: float = 0.0, every_all: int = 0,
                 deadline: float = 120.0, name: str = "chat") -> None:
        self.out = tmp / f"{name}.txt"
        self.log = tmp / f"{name}-producer.log"
        self._log = open(self.log, "ab")
        args = [sys.executable, "-m", MODULE, "chat", str(self.out), str(count), "--rate", str(rate),
                "--every-all", str(every_all), "--deadline", str(deadline)]
        self.proc = subprocess.Popen(args, env=env, cwd=services.ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        STARTED.append(self.proc)

    def created(self) -> dict[str, tuple[str, float]]:
        """message id -> (channel, when its create committed)."""
        found: dict[str, tuple[str, float]] = {}
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    found[parts[0]] = (parts[1], float(parts[2]))
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
        assert self.proc.returncode == 0, f"chat producer failed:\n{output[-3000:]}"
        return json.loads(output.strip().splitlines()[-1])


@dataclass
class ChatTally:
    """What the channels got against what the producer recorded, and the deliveries' status."""

    expected: set[tuple[str, str]]  # (message id, channel)
    arrived: dict[tuple[str, str], dict]  # the mock's record of each
    statuses: Counter[str]  # delivery statuses in the database of record

    @classmethod
    def read(cls, mock: MockChannelsServer, created: dict[str, tuple[str, float]], dsn: str) -> ChatTally:
        expected = {(m, c) for m, (channel, _) in created.items()
                    for c in (("whatsapp", "instagram") if channel == "all" else (channel,))}
        arrived = {(m, c): r for c in ("whatsapp", "instagram") for m, r in mock.state.deliveries(c).items()}
        statuses: Counter[str] = Counter()
        if created:
            with psycopg.connect(dsn) as conn:
                for (status,) in conn.execute("SELECT status FROM message_deliveries WHERE message_id = ANY(%s)",
                                              (list(created),)):
                    statuses[status] += 1
        return cls(expected, arrived, statuses)

    @property
    def lost(self) -> set[tuple[str, str]]:
        return {d for d in self.expected if self.arrived.get(d, {}).get("delivered", 0) == 0}

    @property
    def shown_twice(self) -> int:
        """Deliveries a user saw more than once."""
        return sum(r["delivered"] - 1 for r in self.arrived.values() if r["delivered"] > 1)

    @property
    def sent_twice(self) -> int:
        """Requests the channel accepted beyond the first, for one delivery (sent again)."""
        return sum(r["accepted"] - 1 for r in self.arrived.values() if r["accepted"] > 1)

    @property
    def all_sent(self) -> bool:
        return not self.lost and self.statuses.get("SENT", 0) == len(self.expected)


def wait_chat(mock: MockChannelsServer, producer: ChatProducer, dsn: str, *, timeout: float) -> bool:
    """Poll until every delivery the producer's messages need reached the channel and is SENT in
    the database of record; False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if producer.proc.poll() is not None:
            try:
                if ChatTally.read(mock, producer.created(), dsn).all_sent:
                    return True
            except psycopg.OperationalError:
                pass  # the database is still down
        time.sleep(0.5)
    return False


def chat_env(mock: MockChannelsServer) -> dict[str, str]:
    """Channel calls and leases tuned for seconds; the scheduler's ticks every second; deliveries
    nothing is sending routed again after 5 s (MESSAGE_SWEEP_*). A delivery whose last send has no
    recorded outcome waits longer than any outage here (120 s): its receipt may ride on a retry
    that runs once the database is back, and routing it again before would send it twice (as it
    did with 15 s against the 20 s PostgreSQL outage)."""
    return {**mock.env(), "CHANNEL_TIMEOUT_S": "5", "MESSAGE_SEND_LEASE_S": "10",
            "FALLBACK_POLL_INTERVAL": "1", "MESSAGE_SWEEP_AFTER_S": "5", "MESSAGE_SWEEP_UNKNOWN_AFTER_S": "120",
            "MESSAGE_SWEEP_INTERVAL_S": "1", "OUTBOX_POLL_INTERVAL_MS": "500"}


def outbox_state(dsn: str) -> dict[str, int]:
    """The outbox's events: published, dead (given up), and still due."""
    with psycopg.connect(dsn) as conn:
        published, dead, due = conn.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL AND NOT dead), count(*) FILTER (WHERE dead), "
            "count(*) FILTER (WHERE published_at IS NULL AND NOT dead) FROM outbox_events").fetchone()
    return {"published": published, "dead": dead, "due": due}


def kill_leftovers() -> None:
    """Kill (their whole process group where they have one) the processes a test left running."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(10)
