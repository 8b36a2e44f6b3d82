"""A PostgreSQL cluster of a test's own, on a free port, that the test may stop and start.

Fault tests stop the database of record mid-operation; they never touch the shared server on
5432 that other tests and developers use. The cluster is made with initdb into a temporary
directory (trust auth, 127.0.0.1 only, fsync off: it is thrown away) and removed afterwards.
initdb and postgres refuse to run as root, so as root (CI, these machines) they run as the
``postgres`` user that the PostgreSQL packages create.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests import services


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise AssertionError("no initdb: install PostgreSQL (apt-get install postgresql)")
    return Path(initdb).parent


class PrivatePostgres:
    """``start()``, ``stop()``, ``url(database)``; a context manager that removes the cluster."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
        self.data = self.root / "data"
        self.port = services.free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = "
                       f"'{self.root}'\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")

    def _run(self, args: list[str], timeout: float = 60) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self) -> PrivatePostgres:
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30", "start"])
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in an outage."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """A new, migrated database; returns its SQLAlchemy URL."""
        import psycopg

        from adapters.sql.migrate import upgrade

        name = services.unique("atelier_fault_")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        upgrade(url)
        return url

    def close(self) -> None:
        try:
            if self.running():
                self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
