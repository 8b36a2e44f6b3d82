"""Table dispatch of middleware hooks: same calls, same order, same error handling as Dramatiq's."""

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

import middleware
from brokers.dispatch import AtelierStubBroker, MiddlewareRefused, hook_failure, implements
from domain.errors import TransientError
from middleware.retries import ClassifiedRetries
from tests.services import drain_stub


class Recorder(Middleware):
    def __init__(self, name, calls, fail=None):
        self.name, self.calls, self.fail = name, calls, fail

    def before_process_message(self, broker, message):
        self.calls.append(("before", self.name))
        if self.fail:
            raise self.fail

    def after_process_message(self, broker, message, *, result=None, exception=None):
        self.calls.append(("after", self.name, result))


class Silent(Middleware):
    """Implements nothing: the table leaves it out."""


def run_one(broker_cls, middleware_list, calls):
    broker = broker_cls(middleware=middleware_list)

    @dramatiq.actor(broker=broker, queue_name="q")
    def job():
        calls.append(("actor",))
        return 7

    job.send()
    drain_stub(broker, fail_fast=False)
    return broker


def test_hooks_run_in_the_same_order_as_with_dramatiqs_dispatch():
    def stack(calls):
        return [Recorder("a", calls), Silent(), Recorder("b", calls)]

    ours, theirs = [], []
    run_one(AtelierStubBroker, stack(ours), ours)
    run_one(StubBroker, stack(theirs), theirs)
    assert ours == theirs == [("before", "a"), ("before", "b"), ("actor",), ("after", "b", 7), ("after", "a", 7)]


def test_a_failing_process_hook_fails_the_message_and_skipmessage_stops_the_before_hooks():
    """Dramatiq logs a failing before_process_message and runs the message without what the hook
    gives; atelier fails the message instead (permanent, unless a dependency did not answer), and
    every after-hook still runs."""
    calls = []
    retries = ClassifiedRetries(max_retries=3)
    broker = run_one(AtelierStubBroker, [Recorder("a", calls, fail=ValueError("boom")), Recorder("b", calls), retries],
                     calls)
    assert calls == [("before", "a"), ("after", "b", None), ("after", "a", None)]
    (failed,) = broker.dead_letters  # at once: not retried
    assert failed.options["failed_because"] == "middleware_error" and failed.options.get("retries", 0) == 0

    assert isinstance(hook_failure(Recorder("x", []), ConnectionRefusedError("down")), TransientError)
    assert isinstance(hook_failure(Recorder("x", []), redis.ConnectionError("down")), TransientError)
    assert isinstance(hook_failure(Recorder("x", []), TypeError("bad key")), MiddlewareRefused)

    calls = []
    run_one(AtelierStubBroker, [Recorder("a", calls, fail=SkipMessage("no")), Recorder("b", calls)], calls)
    assert ("actor",) not in calls and ("before", "b") not in calls


def test_a_failing_hook_of_another_signal_is_logged_and_the_rest_still_run(caplog):
    calls = []
    broker = AtelierStubBroker(middleware=[])

    class FailingAck(Middleware):
        def before_ack(self, broker, message):
            raise ValueError("boom")

    class Ack(Middleware):
        def before_ack(self, broker, message):
            calls.append("second")

    broker.add_middleware(FailingAck())
    broker.add_middleware(Ack())
    broker.emit_before("ack", None)
    assert calls == ["second"]
    assert "Unexpected failure in before_ack" in caplog.text


def test_the_table_follows_changes_to_the_middleware_list():
    calls = []
    broker = AtelierStubBroker(middleware=[Recorder("a", calls)])
    broker.emit_before("process_message", None)
    broker.middleware.append(Recorder("late", calls))  # in place, as a Worker's own middleware is added
    broker.emit_before("process_message", None)
    broker.middleware[:] = [m for m in broker.middleware if m.name != "a"]
    broker.emit_before("process_message", None)
    assert calls == [("before", "a"), ("before", "a"), ("before", "late"), ("before", "late")]


def test_implements_tells_real_hooks_from_the_base_no_ops():
    stack = middleware.build_stack()
    names = {type(m).__name__ for m in stack if implements(m, "before_process_message")}
    assert {"LogContext", "Correlation", "AgeLimit"} <= names
    assert "Callbacks" not in names
    assert not any(implements(m, "before_ack") for m in stack)
    hook_on_instance = Silent()
    hook_on_instance.after_ack = lambda broker, message: None
    assert implements(hook_on_instance, "after_ack") and not implements(Silent(), "after_ack")


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "stub"])
def test_the_broker_factory_builds_table_dispatching_brokers(kind, monkeypatch):
    from bootstrap.broker import build_broker
    from bootstrap.settings import Settings

    url = {"redis": "redis://127.0.0.1:6379/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/", "stub": "stub://"}
    settings = Settings(broker_url=url[kind], redis_url="redis://127.0.0.1:6379/0")
    broker = build_broker(settings)
    try:
        assert type(broker).emit_before is AtelierStubBroker.emit_before
    finally:
        broker.close()
