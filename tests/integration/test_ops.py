"""The ops WSGI app on a real HTTP server with real Redis: auth on every endpoint but /healthz, the
dashboard's requeue and delete actions included; the Redis metrics store adding up across processes."""

from __future__ import annotations

import multiprocessing
import re
import socket
import threading
from wsgiref.simple_server import make_server

import dramatiq
import httpx
import pytest
import redis

from adapters.metrics import RedisMetricsStore
from bootstrap import Container
from bootstrap.broker import build_broker
from bootstrap.settings import ConfigError, load_settings
from entrypoints.commands.ops import build_app, management_url
from entrypoints.ops import Auth, _QuietHandler, _Server
from tests import services

USER, PASSWORD, TOKEN = "operator", "s3cret pass", "t" * 32


@pytest.fixture
def ops(sqlite_url, tmp_path):
    prefix = services.unique("t") + "_"
    settings = load_settings(broker_url=services.REDIS_URL, queue_prefix=prefix, database_url=sqlite_url,
                             local_store_dir=tmp_path / "objects", ops_username=USER, ops_password=PASSWORD,
                             ops_token=TOKEN)
    broker = build_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=prefix + "media", actor_name="noop")
    def noop(n):  # pragma: no cover - never run: the tests only look at queued messages
        pass

    container = Container(settings)
    server = make_server("127.0.0.1", 0, build_app(settings, container, broker), server_class=_Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", noop, prefix
    server.shutdown()
    server.server_close()
    container.metrics_store.clear()
    container.close()
    services.purge_queues(services.REDIS_URL, prefix, ("media",))


def message_exists(queue_name: str, redis_id: str) -> bool:
    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        return bool(client.hexists(f"dramatiq:{queue_name}.msgs", redis_id))
    finally:
        client.close()


def test_every_endpoint_but_healthz_needs_credentials(ops):
    url, _, _ = ops
    assert httpx.get(url + "/healthz").status_code == 200
    for path in ("/", "/readyz", "/metrics", "/dashboard/", "/dashboard/queues/x"):
        refused = httpx.get(url + path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == 'Basic realm="atelier ops"'
        assert httpx.get(url + path, auth=(USER, "wrong")).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    assert httpx.get(url + "/metrics", auth=(USER, PASSWORD)).status_code == 200
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    dashboard = httpx.get(url + "/dashboard", auth=(USER, PASSWORD), follow_redirects=True)
    assert dashboard.status_code == 200 and "Dramatiq Dashboard" in dashboard.text


def test_dashboard_actions_need_credentials_and_the_csrf_token(ops):
    url, noop, prefix = ops
    queue_name = prefix + "media"
    redis_id = noop.send(1).options["redis_message_id"]
    form = {"queue": queue_name, "id": redis_id}

    for action in ("/dashboard/delete-message", "/dashboard/requeue-message"):
        assert httpx.post(url + action, data=form).status_code == 401
        assert httpx.post(url + action, data=form, auth=(USER, "wrong")).status_code == 401
    assert message_exists(queue_name, redis_id)

    with httpx.Client(base_url=url, auth=(USER, PASSWORD)) as client:
        assert client.post("/dashboard/delete-message", data=form).status_code == 403  # no CSRF token
        assert message_exists(queue_name, redis_id)
        page = client.get(f"/dashboard/queues/{queue_name}/standard/{redis_id}")
        assert page.status_code == 200, page.text
        token = re.search(r'name="__dd_csrf" value="([0-9a-f]+)"', page.text).group(1)
        deleted = client.post("/dashboard/delete-message", data={**form, "__dd_csrf": token})
    assert deleted.status_code == 302
    assert not message_exists(queue_name, redis_id)


def test_auth_settings():
    assert Auth().allows(None)
    assert not Auth(token=TOKEN).allows(None)
    assert Auth(token=TOKEN).challenge() == 'Bearer realm="atelier ops"'
    with pytest.raises(ConfigError, match="OPS_PASSWORD must be set too"):
        load_settings(ops_username="ann")
    with pytest.raises(ConfigError, match="OPS_TOKEN") as err:
        load_settings(ops_token="short")
    assert "short" not in str(err.value)  # secrets are never echoed
    assert load_settings(ops_username="", ops_password="").ops_username is None  # compose's unset
    assert management_url("amqp://guest:guest@rabbit:5672/", None) == "http://rabbit:15672/"
    assert management_url("amqp://x", "https://mq.example/") == "https://mq.example/"


def _add_from_process(namespace: str, n: int) -> None:
    store = RedisMetricsStore(redis.Redis.from_url(services.REDIS_URL), namespace)
    for _ in range(n):
        store.add([("dramatiq_messages_total", ("q", "a"), 1), ("dramatiq_message_duration_milliseconds_sum",
                                                                ("q", "a"), 0.5), ("atelier_thing", (), 1)])


def test_redis_metrics_store_adds_up_across_processes():
    namespace = f"atelier:{services.unique('t')}_metrics:"
    processes = [multiprocessing.get_context("spawn").Process(target=_add_from_process, args=(namespace, 300))
                 for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    store = RedisMetricsStore(redis.Redis.from_url(services.REDIS_URL), namespace)
    try:
        assert store.read("dramatiq_messages_total") == {("q", "a"): 1200}
        assert store.read("dramatiq_message_duration_milliseconds_sum") == {("q", "a"): 600.0}
        assert store.read("atelier_thing") == {(): 1200}
        assert store.read("never_written") == {}
    finally:
        store.clear()
    assert store.read("dramatiq_messages_total") == {}


def test_readiness_gives_each_check_its_timeout():
    from adapters.health import Check, redis_check
    from entrypoints.ops import Readiness

    release = threading.Event()
    # A server that accepts connections and never answers: Redis PING has to give up by itself.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        readiness = Readiness([Check("hangs", release.wait), Check("fine", lambda: None),
                               redis_check("redis", f"redis://127.0.0.1:{port}/0", 0.5)], timeout=1.0)
        ok, body = readiness.run()
    finally:
        release.set()
        silent.close()
    assert not ok and body["status"] == "unready"
    assert sorted(body["failed"]) == ["hangs", "redis"]
    assert body["checks"]["hangs"]["error"] == "no answer within 1s"
    assert "Timeout" in body["checks"]["redis"]["error"]
    assert body["checks"]["fine"]["status"] == "up"
