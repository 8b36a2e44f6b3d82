"""Fixtures of the fault suite: servers of its own, an effects database, the tuned environment,
and the results table printed at the end of the run (and written to var/fault-table.md); a failed
scenario's logs are kept in var/fault-logs/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.fault import harness
from tests.fault.servers import PrivateRedis, RabbitVhost


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        for row in harness.RESULTS:
            if row.outcome == "?":
                row.outcome = "pass" if report.passed else "FAIL"
        if report.failed and "tmp_path" in getattr(item, "funcargs", {}):
            _keep_logs(item.nodeid, item.funcargs["tmp_path"])


def _keep_logs(nodeid: str, tmp_path: Path) -> None:
    """A failed scenario's logs (workers, scheduler, producers) go to var/fault-logs/<test>/:
    pytest keeps only its last three temporary directories, and other runs rotate them away."""
    import re
    import shutil

    target = services.ROOT / "var" / "fault-logs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::")[-1])
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for path in tmp_path.iterdir():
        if path.is_file() and path.suffix in (".log", ".txt"):
            shutil.copy(path, target / path.name)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not harness.RESULTS:
        return
    text = harness.table(harness.RESULTS)
    terminalreporter.write_sep("=", "fault suite: nothing lost, no effect twice")
    terminalreporter.write_line(text)
    path = services.ROOT / "var" / "fault-table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    harness.kill_leftovers()


@pytest.fixture
def effects_db() -> Iterator[tuple[str, str]]:
    """A migrated database of the test's own on the shared PostgreSQL (it is never stopped), with
    the effect tables: (SQLAlchemy URL, psycopg DSN)."""
    from adapters.sql.migrate import upgrade

    url = services.create_pg_database()
    upgrade(url)
    dsn = harness.effects_dsn(url)
    harness.create_effects_tables(dsn)
    yield url, dsn
    services.drop_pg_database(url)


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A private redis-server, memory only (as the shared one runs)."""
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    with RabbitVhost() as v:
        yield v


@pytest.fixture
def fault_env(base_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Timeouts tuned so a scenario takes seconds: retries every 0.1-1 s (and many of them, so an
    outage of 20 s does not exhaust them), Dramatiq's consumers restarted 0.5 s after a lost
    connection, a dead Redis worker found after 3 s (BROKER_HEARTBEAT_TIMEOUT_MS), a dead
    process's dedup lease over after 2 s (DEDUP_LEASE_TTL_S)."""
    env = dict(base_env)
    env.update({
        "RETRY_MAX_RETRIES": "100", "RETRY_MIN_BACKOFF_MS": "100", "RETRY_MAX_BACKOFF_MS": "1000",
        "BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
        "DEDUP_LEASE_TTL_S": "2",
        "dramatiq_restart_delay": "500",
        "LOG_LEVEL": "INFO",
    })
    return env
