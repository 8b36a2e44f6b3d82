"""Hostile input through a real `dramatiq actors` worker, on Redis and on RabbitMQ.

A smaller, fixed run beside the stub fuzz (test_stub_fuzz.py): about twenty junk messages from a
producer that is plain Dramatiq (a RedisBroker or RabbitmqBroker with no middleware at all,
``broker.enqueue(Message(...))``) and raw bodies written to the broker as another program would
(Redis: HSET + RPUSH in Dramatiq's layout; RabbitMQ: basic_publish of the bytes with pika), then
good messages. Each junk message must end as exactly one dead letter with a reason (found by a
marker in its id), with no retry; the good ones must have their effects; nothing is left unacked
or waiting in a delay queue; the worker is still running and logged no dead thread or consumer.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message

from tests import services
from tests.fuzz.harness import printable
from tests.fuzz.junk import HUGE, now_ms

pytestmark = pytest.mark.e2e

QUEUES = ("media", "embeddings", "messages", "fallback", "outbox", "uploads")
DEADLINE_S = 45


@pytest.fixture(params=sorted(services.BROKERS))
def env(request, base_env, pg_test_url, tmp_path) -> Iterator[dict[str, str]]:
    closed = services.free_port()  # nothing listens there: a channel call fails at once
    env = dict(base_env)
    env.update({
        "BROKER_URL": services.BROKERS[request.param], "DATABASE_URL": pg_test_url, "REDIS_URL": services.REDIS_URL,
        "QDRANT_PATH": str(tmp_path / "qdrant"), "CLIP_PRETRAINED": str(tmp_path / "no-weights.pt"),
        "WHATSAPP_BASE_URL": f"http://127.0.0.1:{closed}", "INSTAGRAM_BASE_URL": f"http://127.0.0.1:{closed}",
        "CHANNEL_TIMEOUT_S": "1",
    })
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], QUEUES)
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    keys = list(client.scan_iter(f"atelier:{env['QUEUE_PREFIX']}*"))
    if keys:
        client.delete(*keys)
    client.close()


class Producer:
    """A plain Dramatiq producer (no atelier middleware) plus raw writes to the same broker."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["BROKER_URL"]
        self.prefix = env["QUEUE_PREFIX"]
        self.redis = self.url.startswith("redis")
        if self.redis:
            import redis
            from dramatiq.brokers.redis import RedisBroker

            self.broker = RedisBroker(url=self.url, middleware=[])
            self.client = redis.Redis.from_url(self.url)
        else:
            import pika
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            self.broker = RabbitmqBroker(url=self.url, middleware=[], confirm_delivery=True)
            self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self.channel = self.connection.channel()
        for name in QUEUES:
            self.broker.declare_queue(self.queue(name))

    def queue(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def send(self, message: Message) -> None:
        self.broker.enqueue(message)

    def raw(self, queue: str, body: bytes, broker_id: str) -> None:
        """``body`` on ``queue`` as another program would put it there, under ``broker_id``."""
        if self.redis:
            self.client.hset(f"dramatiq:{queue}.msgs", broker_id, body)
            self.client.rpush(f"dramatiq:{queue}", broker_id)
        else:
            import pika

            self.channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, message_id=broker_id))

    def pending(self) -> dict[str, int]:
        """Messages waiting in each queue and delay queue, and (Redis) held in an ack set."""
        counts = {}
        for name in QUEUES:
            for q in (self.queue(name), f"{self.queue(name)}.DQ"):
                if self.redis:
                    counts[q] = self.client.llen(f"dramatiq:{q}")
                else:
                    counts[q] = self.channel.queue_declare(q, passive=True).method.message_count
        if self.redis:
            for key in self.client.scan_iter(f"dramatiq:__acks__.*.{self.prefix}*"):
                counts[key.decode()] = self.client.scard(key)
        return {q: n for q, n in counts.items() if n}

    def close(self) -> None:
        self.broker.close()
        if self.redis:
            self.client.close()
        else:
            self.connection.close()


def _message(queue: str, actor: str, args: Any, marker: str, **fields: Any) -> Message:
    values = {"queue_name": queue, "actor_name": actor, "args": args, "kwargs": {}, "options": {},
              "message_id": marker, "message_timestamp": now_ms(), **fields}
    return Message(**values)


def _body(queue: str, actor: str, args: Any, **fields: Any) -> bytes:
    values = {"queue_name": queue, "actor_name": actor, "args": args, "kwargs": {}, "options": {},
              "message_id": str(uuid.uuid4()), "message_timestamp": now_ms(), **fields}
    return json.dumps(values, allow_nan=True).encode()


def junk(producer: Producer) -> dict[str, str]:
    """Sends the junk; returns {case name: the marker its letter's message id must contain}."""
    media, messages, uploads = producer.queue("media"), producer.queue("messages"), producer.queue("uploads")
    uid = str(uuid.uuid4())
    sent: dict[str, str] = {}

    def send(name: str, queue: str, actor: str, args: Any, **fields: Any) -> None:
        marker = f"fz-{uuid.uuid4()}"
        producer.send(_message(queue, actor, args, marker, **fields))
        sent[name] = marker

    def raw(name: str, queue: str, body: bytes, marker: str | None = None) -> None:
        marker = marker or f"fz-{uuid.uuid4()}"
        producer.raw(queue, body, marker)
        sent[name] = marker

    # From a plain Dramatiq producer: arguments that do not fit, options of the wrong type, an
    # actor this worker does not declare.
    send("too_many_args", media, "process_image", (uid, uid, uid))
    send("unknown_keyword", media, "process_image", (uid,), kwargs={"force": True})
    send("int_argument", media, "process_image", (5,))
    send("huge_string_argument", uploads, "merge_upload", (HUGE,))
    send("nan_argument", messages, "deliver_message", (float("nan"), "whatsapp"))
    send("nested_junk_argument", media, "process_uploaded_image", ([{"a": [[None, float("inf")]]}],))
    send("unknown_actor", media, "no_such_actor", (uid,))
    send("retries_abc", media, "process_image", (uid,), options={"retries": "abc"})
    send("eta_x", media, "process_image", (uid,), options={"eta": "x"})
    send("max_retries_negative_float", media, "process_image", (uid,), options={"max_retries": -1.5})
    send("time_limit_slow", media, "process_image", (uid,), options={"time_limit": "slow"})
    send("dedup_window_x", messages, "route_message", (uid,), options={"dedup_window": "x"})
    send("correlation_id_5", media, "process_image", (uid,), options={"correlation_id": 5})
    send("throws_a_string", media, "process_image", ("not-an-id",), options={"throws": "ValueError"})
    # Raw bodies: not JSON, not a message, junk ids, naming another queue.
    raw("raw_not_json", media, b"\x00\x01not json\xff")
    raw("raw_json_array", media, b"[1, 2, 3]")
    raw("raw_missing_fields", media, b'{"actor_name": "process_image"}')
    marker = f"fz-{uuid.uuid4()}"
    raw("raw_names_another_queue", media, _body(producer.queue("outbox"), "process_image", [uid],
                                                 message_id=marker), marker)
    marker = f"fz-{uuid.uuid4()}"
    raw("raw_id_1000_chars", media, _body(media, "process_image", [uid], message_id=marker + "i" * 1000))
    sent["raw_id_1000_chars"] = marker
    marker = f"fz-{uuid.uuid4()}"
    raw("raw_id_a_list", media, _body(media, "process_image", [uid], message_id=[marker]))
    sent["raw_id_a_list"] = marker
    return sent


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_junk_from_any_producer_ends_as_one_dead_letter_each_and_good_messages_still_run(env, tmp_path):
    from bootstrap import Container
    from bootstrap.settings import load_settings
    from domain.models import ImageStatus, UploadStatus

    prefix = env["QUEUE_PREFIX"]
    container = Container(load_settings(broker_url="stub://", database_url=env["DATABASE_URL"],
                                        local_store_dir=Path(env["LOCAL_STORE_DIR"]), redis_url=None))
    image = container.media.register_image(_png(), "image/png")
    upload = container.uploads.create_upload("hello.txt", 1, "text/plain")
    container.uploads.upload_chunk(upload.id, 0, b"hello, world")
    letters = container.dead_letter_store

    def ours() -> list[Any]:  # this run's letters: the database is shared by the session
        return [x for x in letters.list(limit=10_000) if x.queue.startswith(prefix)]

    worker = services.WorkerProcess(env, tmp_path / "worker.log", threads=2)
    producer = Producer(env)
    try:
        with worker:
            sent = junk(producer)
            # Good messages after the junk, from the same plain producer.
            good = [("process_image", "media", (image.id,)), ("merge_upload", "uploads", (upload.id,)),
                    ("process_uploaded_image", "media", ({"payload": {}},)),
                    ("collect_abandoned_uploads", "uploads", ())]
            for actor, queue, args in good:
                producer.send(_message(producer.queue(queue), actor, args, str(uuid.uuid4())))

            def settled() -> bool:
                return (container.media.get_image(image.id).status is ImageStatus.READY
                        and container.uploads.get_upload(upload.id).status is UploadStatus.COMPLETED
                        and len(ours()) >= len(sent) and not producer.pending())

            try:
                services.wait_for(settled, timeout=DEADLINE_S, interval=0.25, message="junk and good messages settled")
            except AssertionError:
                pass  # what is missing is reported below, case by case
            found = ours()
            pending = producer.pending()
            alive = worker.proc.poll() is None
            image_status = container.media.get_image(image.id).status
            upload_status = container.uploads.get_upload(upload.id).status
        output = worker.output()
        after_stop = producer.pending()  # what a graceful stop put back: it was never acked
    finally:
        producer.close()
        container.close()

    def ids(letter: Any) -> str:
        # A message whose id is no id gets a letter id of its own; what it was stays in the options.
        return f"{letter.message_id} {letter.options.get('original_message_id', '')}"

    by_case = {name: [x for x in found if marker in ids(x)] for name, marker in sent.items()}
    problems = [f"{name}: {len(xs)} letters" + (f" {[(x.reason, x.attempts) for x in xs]}" if xs else "")
                for name, xs in by_case.items() if len(xs) != 1]
    problems += [f"{name}: letter without a reason" for name, xs in by_case.items() for x in xs if not x.reason]
    problems += [f"{name}: retried before it was dead-lettered ({x.reason}, {x.attempts} attempts)"
                 for name, xs in by_case.items() for x in xs if x.reason == "retries_exhausted" or x.attempts > 1]
    stray = [x for x in found if not any(m in ids(x) for m in sent.values())]
    problems += [f"letter for no junk case: {x.actor} {x.reason} {x.error[:120]!r}" for x in stray]
    if image_status is not ImageStatus.READY or upload_status is not UploadStatus.COMPLETED:
        problems.append(f"good messages not processed: image {image_status}, upload {upload_status}")
    if pending:
        problems.append(f"left in queues or ack sets while running: {pending}")
    if after_stop:
        problems.append(f"unacknowledged (put back by the graceful stop): {after_stop}")
    if not alive:
        problems.append("the worker process exited")
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    retried = [r for r in records if str(r.get("event", "")).startswith("Retrying message")]
    if retried:
        problems.append(f"{len(retried)} retries scheduled: {[r['event'] for r in retried][:5]}")
    for needle in ("Exception in thread", "Consumer encountered an unexpected error"):
        if needle in output:
            problems.append(f"worker log: {needle!r}")
    for r in records:  # what went wrong, as the worker logged it
        if r.get("level") == "critical" and "exception" in r:
            problems.append(f"worker log, critical: {r['event']}: {r['exception'].splitlines()[-1][:300]}")
    problems += [line[:300] for line in output.splitlines() if not line.startswith("{") and "Error" in line][:5]
    counts = Counter(f"dead letter: {x.reason}" for x in found)
    summary = printable(f"{env['BROKER_URL'].split(':')[0]}: {len(sent)} junk cases, letters {dict(counts)}")
    print(f"\n{summary}")
    assert not problems, printable("\n".join([summary, *problems]))
