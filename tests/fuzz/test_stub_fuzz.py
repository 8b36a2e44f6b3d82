"""Hostile input on atelier's real stack (bootstrap.build_broker, stub://), every declared actor.

The promise under test: any message from any producer ends processed, skipped as a duplicate, or
as exactly one dead letter with a reason, within seconds, with no retry; the worker keeps all its
threads; good messages sent after the junk are processed. tests/fuzz/harness.py is the oracle.

The stack is the one `dramatiq actors` runs: the broker from build_broker with BROKER_URL=stub://,
the actors of the `actors` package (each declared actor is re-declared on this broker, so a new
actor is fuzzed without editing this file), dead letters in PostgreSQL (a database of this module's
own: its column limits are the strict ones), dedup keys, breakers and metrics in Redis under a
prefix of this run. Nothing reaches the outside: objects go to a temporary directory, the channel
gateways are in-memory fakes, Qdrant is local, no CLIP weights exist to load.

Bounded: FUZZ_EXAMPLES (default 300) structured junk messages and a third as many raw bodies; each
is decided within FUZZ_DECIDE_S (5 s) or fails. `pytest -s` prints the counts by outcome and reason.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator

import dramatiq
import dramatiq.broker
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import services
from tests.fuzz.harness import WORKER_THREADS, Verdict, World
from tests.fuzz.junk import (
    CASE_NAMES,
    Delivery,
    actor_infos,
    encode,
    junk_deliveries,
    named_cases,
    now_ms,
    raw_deliveries,
)
from tests.unit.fakes import FakeChannelGateway

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
#: FUZZ_SURVEY=1: record every failure instead of stopping at the first (no shrinking), and print
#: the distinct ones at the end: a map of what is broken, for whoever fixes it.
SURVEY = os.environ.get("FUZZ_SURVEY") == "1"
FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


class _Gateway(FakeChannelGateway):
    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    import actors  # declares every actor (on the process's broker)
    import bootstrap.broker
    import bootstrap.container
    from adapters.sql.migrate import upgrade
    from bootstrap import Container, build_broker, set_container
    from bootstrap.settings import load_settings
    from domain.models import MessageChannel
    tmp = tmp_path_factory.mktemp("fuzz")
    database = services.create_pg_database()
    upgrade(database)
    prefix = services.unique("fz") + "_"
    settings_ = load_settings(
        broker_url="stub://", database_url=database, redis_url=services.REDIS_URL, queue_prefix=prefix,
        local_store_dir=tmp / "objects", qdrant_path=tmp / "qdrant", clip_pretrained=str(tmp / "no-weights.pt"),
        minio_endpoint=None, qdrant_url=None)
    broker = build_broker(settings_)
    container = Container(settings_)
    # Channels: in-memory fakes (a good delivery must succeed; nothing may leave the machine).
    container.__dict__["channel_gateways"] = {MessageChannel.WHATSAPP: _Gateway("wa"),
                                              MessageChannel.INSTAGRAM: _Gateway("ig")}
    previous_container = bootstrap.container._container
    declared = [a for a in actors.broker.actors.values() if a.fn.__module__.startswith("actors.")]
    world = None
    with pytest.MonkeyPatch.context() as mp:
        # This broker is the process's for the module: what actors send (a fan-out, the outbox
        # relay, the fallback drain) comes back to it.
        mp.setattr(bootstrap.broker, "_broker", broker)
        mp.setattr(dramatiq.broker, "global_broker", broker)
        set_container(container)
        try:
            for actor in declared:
                mp.setattr(actor, "broker", broker)
                broker.declare_actor(actor)
            world = World(broker, container)
            yield world
        finally:
            if world is not None:
                world.stop()
                print(f"\n{world.tally}")
                if SURVEY:
                    print(world.tally.survey())
            set_container(previous_container)
            container.close()
            broker.close()
            services.drop_pg_database(database)
            import redis

            client = redis.Redis.from_url(services.REDIS_URL)
            keys = list(client.scan_iter(f"atelier:{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


def check(world: World, delivery: Delivery) -> Verdict:
    verdict = world.deliver(delivery)
    assert SURVEY or verdict.ok, f"{verdict.explain()}\n{world.tally}"
    return verdict


@pytest.mark.parametrize("name", CASE_NAMES)
def test_named_junk_ends_decided(world, name):
    """One case per class of junk the issue names: each ends as the promise says."""
    check(world, named_cases(actor_infos(world.broker))[name])


@pytest.mark.parametrize("bad_id", [None, "", 0, False])
def test_messages_sharing_an_unusable_id_each_leave_their_own_letter(world, bad_id):
    """Producers that send no usable id send many such messages: each is a message of its own."""
    infos = actor_infos(world.broker)
    actor = next(a for a in infos.values() if len(a.params) == 1)
    for n in range(2):
        fields = {"queue_name": actor.queue, "actor_name": actor.name, "args": [f"not-an-id-{n}"], "kwargs": {},
                  "options": {}, "message_id": bad_id, "message_timestamp": now_ms()}
        check(world, Delivery(actor.queue, encode(fields), f"message {n + 1} of 2 with id {bad_id!r}",
                              actor=actor.name))


@settings(FUZZ, max_examples=EXAMPLES)
@given(data=st.data())
def test_junk_messages_for_every_actor_end_decided(world, data):
    check(world, data.draw(junk_deliveries(actor_infos(world.broker)), label="delivery"))


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@given(data=st.data())
def test_raw_bodies_that_are_not_messages_end_as_dead_letters(world, data):
    verdict = check(world, data.draw(raw_deliveries(actor_infos(world.broker)), label="delivery"))
    assert SURVEY or len(verdict.letters) == 1 and verdict.outcomes == [f"dead letter: {verdict.letters[0].reason}"], \
        f"a body that is not a message must become exactly one dead letter\n{verdict.explain()}\n{world.tally}"


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _plain(world: World, actor_name: str, *args: object) -> Delivery:
    """A good message as a plain Dramatiq producer encodes it (no atelier middleware, no options)."""
    actor = actor_infos(world.broker)[actor_name]
    fields = {"queue_name": actor.queue, "actor_name": actor_name, "args": list(args), "kwargs": {},
              "options": {}, "message_id": str(uuid.uuid4()), "message_timestamp": now_ms()}
    return Delivery(actor.queue, encode(fields), f"good {actor_name}{args!r:.60}", actor=actor_name)


#: Declared actors that get no good message here, and why. A new actor fails the test below until
#: it has a good message or an entry here.
NO_GOOD_MESSAGE = {"embed_image": "needs a CLIP model; its junk is fuzzed all the same"}


def test_good_messages_after_the_junk_are_processed_and_the_worker_kept_its_threads(world):
    """Runs last in this module: the same worker, after all the junk above."""
    from domain.models import ImageStatus, MessageChannel, MessageStatus, UploadStatus

    c = world.container
    image = c.media.register_image(_png(), "image/png")
    upload = c.uploads.create_upload("hello.txt", 1, "text/plain")
    c.uploads.upload_chunk(upload.id, 0, b"hello, world")
    message, _ = c.messaging.create(channel="all", recipient="+15550000000", text="hello")

    good = [
        # Routed by a producer: one delivery per channel, each sent once through the fake gateways.
        (_plain(world, "route_message", message.id), ["processed"] * 3),
        # The same message routed again by a producer: a duplicate within the dedup window.
        (_plain(world, "route_message", message.id), ["skipped as a duplicate"]),
        # The relay sends route_message for message.created (its own dedup key), which finds nothing to
        # send, and process_image for image.uploaded.
        (_plain(world, "relay_outbox"), ["processed"] * 3),
        (_plain(world, "deliver_message", message.id, "whatsapp"), ["processed"]),  # already sent: not again
        (_plain(world, "process_image", image.id), ["processed"]),
        (_plain(world, "merge_upload", upload.id), ["processed"]),
        (_plain(world, "process_uploaded_image", {"payload": {}}), ["processed"]),
        (_plain(world, "drain_fallback"), ["processed"]),
        (_plain(world, "collect_abandoned_uploads"), ["processed"]),
        # Nothing is stuck: the sweep finds no delivery to send again.
        (_plain(world, "sweep_deliveries"), ["processed"]),
    ]
    covered = {d.actor for d, _ in good}
    missing = set(actor_infos(world.broker)) - covered - set(NO_GOOD_MESSAGE)
    assert not missing, f"declared actors with no good message in this test: {sorted(missing)}"
    for delivery, outcomes in good:
        verdict = world.deliver(delivery)
        assert verdict.ok and sorted(verdict.outcomes) == sorted(outcomes), f"{verdict.explain()}\n{world.tally}"

    assert c.media.get_image(image.id).status is ImageStatus.READY
    assert c.uploads.get_upload(upload.id).status is UploadStatus.COMPLETED
    assert c.messaging.get(message.id).status is MessageStatus.SENT
    gateways = c.channel_gateways
    assert [m for m, _ in gateways[MessageChannel.WHATSAPP].sent] == [message.id]
    assert [m for m, _ in gateways[MessageChannel.INSTAGRAM].sent] == [message.id]
    # The worker has every thread it started with, and was never restarted after a junk message.
    assert not world.dead_threads() and len(world.worker.workers) == WORKER_THREADS
    assert world.restarts == 0, f"the worker was restarted {world.restarts} time(s) after junk\n{world.tally}"
