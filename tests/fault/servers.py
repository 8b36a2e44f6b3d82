"""Servers a fault test may stop, crash or wipe: its own, never the shared ones on 5432/6379/5672.

- PrivateRedis: a redis-server on a free port in a temporary directory; ``crash()`` is kill -9,
  ``start()`` again replays the append-only file when it was started with ``appendonly=True``
  (``--appendfsync always``: every write is on disk before Redis answers it).
- PrivatePostgres (tests/private_pg.py): a PostgreSQL cluster made with initdb into a temporary
  directory (trust, 127.0.0.1 only), run as the ``postgres`` user when the tests run as root.
- PrivateRabbit: a RabbitMQ node of its own (its node name, AMQP and distribution ports, Mnesia
  directory, config file and Erlang cookie in a temporary directory), run as the ``rabbitmq``
  user; ``crash()`` is kill -9 of its Erlang VM only (never a process group: the node shares the
  machine's epmd with the shared node).
- RabbitVhost: a vhost of its own on the shared RabbitMQ node, for tests that only close their
  own connections (``rabbitmqctl close_connection``); the node itself is never stopped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests import services
from tests.private_pg import PrivatePostgres

__all__ = ["PrivatePostgres", "PrivateRabbit", "PrivateRedis", "RabbitVhost", "rabbitmqctl"]


def _owned_tmpdir(prefix: str, user: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    return root


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """A redis-server of the test's own. ``appendonly=True``: AOF with fsync on every write, so a
    kill -9 loses nothing Redis answered; False: memory only, as the shared servers run (a restart
    comes back empty)."""

    def __init__(self, *, appendonly: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise AssertionError("no redis-server: install it (apt-get install redis-server)")
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="atelier-redis-"))
        self.port = services.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        services.wait_for(lambda: self._ready() or self.proc.poll() is not None, timeout=30,
                          message=f"redis-server on {self.port}")
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text(errors='replace')}")
        return self

    def _ready(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:  # includes "LOADING": the AOF is still being replayed
            return False

    def crash(self) -> None:
        """kill -9: what was not on disk is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self) -> None:
        """Forget everything on disk (the next start comes back empty)."""
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def close(self) -> None:
        self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


class PrivateRabbit:
    """A RabbitMQ node of the test's own on free ports. Everything it reads or writes is in its
    temporary directory (config file, enabled plugins: none, Mnesia, logs, pid file, Erlang cookie
    in its own HOME), so it shares nothing with the machine's node but epmd, which it only
    registers with. Messages survive ``crash()`` when their queue is durable, they were published
    persistent and the publisher had its confirm (Dramatiq's RabbitmqBroker does the first two,
    ``confirm_delivery=True`` the third)."""

    user = "rabbitmq"

    def __init__(self) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise AssertionError("no rabbitmq-server: install it (apt-get install rabbitmq-server)")
        self.root = _owned_tmpdir("atelier-rabbit-", self.user if os.geteuid() == 0 else None)
        self.name = f"{services.unique('fault')}@localhost"
        self.port = services.free_port()
        self.dist_port = services.free_port()
        home = self.root / "home"
        for d in (home, self.root / "mnesia", self.root / "log"):
            d.mkdir()
        (home / ".erlang.cookie").write_text(services.unique("cookie") + services.unique(""))
        (home / ".erlang.cookie").chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")  # not the machine's (it names the shared node)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"), "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.root / "beam.pid"), "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _as_user(self, args: list[str]) -> list[str]:
        env = [f"{k}={v}" for k, v in self.env.items()]
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        return [*prefix, "env", "-i", *env, *args]

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._as_user([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args]),
                              capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self, timeout: float = 90) -> PrivateRabbit:
        (self.root / "beam.pid").unlink(missing_ok=True)
        log = open(self.root / "server.out", "ab")
        # Not a session of its own: killing it must never reach epmd, which it may have found running.
        self.proc = subprocess.Popen(self._as_user([str(RABBIT_BIN / "rabbitmq-server")]), cwd=self.root,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        services.wait_for(lambda: _port_open(self.port) or self.proc.poll() is not None, timeout=timeout,
                          message=f"RabbitMQ node {self.name} on {self.port}")
        if self.proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited:\n{self.output()}")
        done = self.ctl("await_startup", "--timeout", str(max(5, int(deadline - time.monotonic()))))
        if done.returncode != 0:
            raise AssertionError(f"RabbitMQ node {self.name} did not start:\n{done.stdout}{done.stderr}\n"
                                 f"{self.output()}")
        return self

    def output(self) -> str:
        path = self.root / "server.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def beam_pid(self) -> int:
        return int((self.root / "beam.pid").read_text().strip())

    def crash(self) -> None:
        """kill -9 of the node's Erlang VM: unconfirmed messages may be lost, confirmed ones may not."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)
        services.wait_for(lambda: not _port_open(self.port), timeout=30, message="RabbitMQ node down")

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.ctl("stop", timeout=60)
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(self.beam_pid(), signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateRabbit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """rabbitmqctl against the machine's shared node (vhost-level commands only)."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


class RabbitVhost:
    """A vhost of the test's own on the shared RabbitMQ node (guest may use it); deleted afterwards
    with everything in it. ``close_connections()`` closes this vhost's connections only."""

    def __init__(self) -> None:
        self.name = services.unique("fault_")
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    @property
    def url(self) -> str:
        return f"{services.RABBITMQ_URL.rstrip('/')}/{self.name}"

    def close_connections(self) -> int:
        closed = 0
        for line in rabbitmqctl("list_connections", "pid", "vhost").splitlines():
            pid, _, vhost = line.partition("\t")
            if vhost == self.name:
                subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "fault test"], capture_output=True,
                               timeout=60)
                closed += 1
        return closed

    def close(self) -> None:
        rabbitmqctl("delete_vhost", self.name)

    def __enter__(self) -> RabbitVhost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
