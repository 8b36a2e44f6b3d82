"""`atelier outbox list / retry / relay` as subprocesses on SQLite and the stub broker."""

import json

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import DomainEvent, new_id, utcnow
from tests import services


def test_dead_event_is_listed_retried_and_relayed(base_env):
    assert services.run_cli(["migrate"], base_env).returncode == 0
    engine = make_engine(base_env["DATABASE_URL"])
    uow = uow_factory(engine)
    dead, healthy = (DomainEvent("image.processed", "image", new_id(), {"n": i}) for i in range(2))
    with uow() as u:
        u.add_event(dead)
        u.add_event(healthy)
        u.outbox.mark_failed(dead.id, attempts=4, error="no actor named 'x' is declared",
                             next_attempt_at=utcnow(), dead=True)
        u.commit()

    listed = services.run_cli(["outbox", "list", "--dead", "--json"], base_env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["attempts"], r["dead"], r["last_error"]) for r in rows] == [
        (dead.id, 4, True, "no actor named 'x' is declared")]

    relayed = services.run_cli(["outbox", "relay", "--once"], base_env)
    assert relayed.returncode == 0, relayed.stderr
    assert json.loads(relayed.stdout.splitlines()[-1])["published"] == 1  # the dead one stays out

    retried = services.run_cli(["outbox", "retry", dead.id], base_env)
    assert retried.returncode == 0 and f"{dead.id} due again" in retried.stdout, retried.stderr
    assert services.run_cli(["outbox", "list", "--dead"], base_env).stdout == ""
    assert services.run_cli(["outbox", "list", "--pending"], base_env).stdout.startswith(dead.id)

    relayed = services.run_cli(["outbox", "relay", "--once"], base_env)
    assert json.loads(relayed.stdout.splitlines()[-1])["published"] == 1
    with uow() as u:
        assert all(u.outbox.get(e.id).published_at is not None for e in (dead, healthy))
    engine.dispose()

    unknown = services.run_cli(["outbox", "retry", new_id()], base_env)
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    bad = services.run_cli(["outbox", "retry", "nope"], base_env)
    assert bad.returncode == 1 and "must be a UUID" in bad.stderr
