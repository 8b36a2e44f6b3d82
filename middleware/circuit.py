"""Circuit breaking per guarded dependency, with state shared by every worker."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage, TimeLimitExceeded

from brokers.park import fresh_copy, park
from domain.errors import RateLimited, TransientError
from domain.ports import BreakerStore, FallbackQueue, MetricsStore
from domain.resilience import BreakerPolicy, CircuitState
from runtime import DEPENDENCY_CONTACT

#: Counter of state changes, labels (circuit, state entered).
CIRCUIT_TRANSITIONS = "atelier_circuit_transitions_total"
#: Counter of messages parked while a circuit would not let them through, labels (circuit, how:
#: delayed | fallback | actor:<name>).
CIRCUIT_PARKED = "atelier_circuit_parked_total"


def _dependency_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [TransientError, TimeoutError, ConnectionError, OSError,
                                         TimeLimitExceeded]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # httpx is optional here
        pass
    return tuple(errors)


#: Message option: True when this message's next run does not call the guarded dependency, so
#: the circuit neither parks it nor counts it.
EXEMPT_OPTION = "circuit_exempt"

#: What counts against a circuit: the dependency failed or did not answer. Never bad input
#: (PermanentError and everything else).
DEPENDENCY_ERRORS = _dependency_errors()


def is_dependency_failure(exception: BaseException) -> bool:
    # A rate limit of one recipient or of the sender's throughput is flow control from a
    # dependency that works (the pacer holds it back); an app- or account-level limit stops
    # every message for minutes, like an outage.
    if isinstance(exception, RateLimited) and exception.scope != "account":
        return False
    return isinstance(exception, DEPENDENCY_ERRORS)


class CircuitBreaker(Middleware):
    """An actor names the dependency it guards with the ``circuit`` option: a string, or a
    callable of the message's arguments returning one (or None: not guarded), e.g.
    ``circuit=lambda message_id, channel: f"channel:{channel}"``.

    Closed: messages run; dependency failures (TransientError, timeouts, connection errors;
    see DEPENDENCY_ERRORS; not a RateLimited of one recipient or of throughput) are counted,
    and ``failure_threshold`` of them within ``window`` seconds open the circuit. Open: messages
    are not run against the dependency but parked:
    put back on their queue delayed until the circuit may let traffic through (with jitter), or,
    with the actor option ``circuit_fallback=True``, pushed onto the circuit's fallback queue,
    which the drain_fallback actor moves back to their queues once it does; or, with
    ``circuit_fallback="<actor name>"``, handed to that actor (same arguments) instead. After
    ``reset_timeout`` seconds the circuit is half-open: ``half_open_trials`` messages run; a
    success closes it, a dependency failure opens it again, other messages stay parked. A parked
    message keeps its retry count: it did not fail, it waited. Nothing is dropped.

    A success is evidence only if the run called the dependency. An actor that can end without
    calling it (the work was already done) says ``circuit_requires_contact=True`` and its adapters
    call ``dependency_reached()``: a run that did not is then neither a success of the circuit nor
    a spent half-open trial (the trial is handed back).

    Actor options override the defaults per actor: circuit_failure_threshold, circuit_window,
    circuit_reset_timeout (seconds), circuit_half_open_trials. Actors sharing a circuit should
    agree on them.

    State changes are logged and counted (atelier_circuit_transitions_total); the state itself
    is exported per circuit by the ops server from the store.

    Parameters:
      store: callable returning the BreakerStore; fallback: callable returning the FallbackQueue;
      policy: the default BreakerPolicy; metrics: optional callable returning the MetricsStore.
    """

    def __init__(self, store: Callable[[], BreakerStore], fallback: Callable[[], FallbackQueue], *,
                 policy: BreakerPolicy | None = None,
                 metrics: Callable[[], MetricsStore] | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._fallback_factory = fallback
        self._store: BreakerStore | None = None
        self._fallback: FallbackQueue | None = None
        self._metrics_factory = metrics
        self.policy = policy or BreakerPolicy()
        # Per delivery (two deliveries of one message can run at once), with the message id so a
        # reused object id never matches: (id(delivery), message id) -> (circuit, trial, policy,
        # contact: the run's flag when the actor requires contact, else None).
        self._running: dict[tuple[int, str], tuple[str, bool, BreakerPolicy, list[bool] | None]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"circuit", "circuit_fallback", "circuit_failure_threshold", "circuit_window",
                "circuit_reset_timeout", "circuit_half_open_trials", "circuit_requires_contact"}

    @property
    def store(self) -> BreakerStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    @property
    def fallback(self) -> FallbackQueue:
        if self._fallback is None:
            self._fallback = self._fallback_factory()
        return self._fallback

    def policy_for(self, options: dict[str, Any]) -> BreakerPolicy:
        p = self.policy
        if not any(k in options for k in ("circuit_failure_threshold", "circuit_window", "circuit_reset_timeout",
                                          "circuit_half_open_trials")):
            return p
        return BreakerPolicy(
            failure_threshold=int(options.get("circuit_failure_threshold", p.failure_threshold)),
            window_ms=int(float(options.get("circuit_window", p.window_ms / 1000)) * 1000),
            reset_timeout_ms=int(float(options.get("circuit_reset_timeout", p.reset_timeout_ms / 1000)) * 1000),
            half_open_trials=int(options.get("circuit_half_open_trials", p.half_open_trials)),
        )

    def circuit_of(self, broker: Broker, message: Message) -> tuple[str, dict[str, Any]] | None:
        if message.options.get(EXEMPT_OPTION) is True:
            # This run will not call the dependency (deliver_message recording a carried
            # receipt): parking it would only delay it, its only copy in the fallback list.
            return None
        actor_options = broker.get_actor(message.actor_name).options
        circuit = actor_options.get("circuit")
        if circuit is None:
            return None
        if callable(circuit):
            circuit = circuit(*message.args, **message.kwargs)
            if circuit is None:
                return None
        return str(circuit), actor_options

    def before_process_message(self, broker: Broker, message: Message) -> None:
        found = self.circuit_of(broker, message)
        if found is None:
            return
        circuit, actor_options = found
        policy = self.policy_for(actor_options)
        try:
            decision = self.store.allow(circuit, int(time.time() * 1000), policy)
        except Exception:  # no shared state: the dependency decides, as if there were no breaker
            self.logger.error("Breaker store unreachable; message %r runs against %r unguarded.",
                              message.message_id, circuit, exc_info=True)
            return
        if decision.transition is not None:
            self._transition(circuit, *decision.transition)
        if decision.allowed:
            self._run(message, circuit, decision.trial, policy, actor_options)
            return
        self._park(broker, message, circuit, decision.state, decision.retry_at_ms, actor_options)

    def _park(self, broker: Broker, message: Message, circuit: str, state: CircuitState, retry_at_ms: int,
              actor_options: dict[str, Any]) -> None:
        how = "delayed"
        target = actor_options.get("circuit_fallback")
        try:
            if isinstance(target, str):
                # A fallback actor (another channel, say) takes the same arguments; it runs under
                # the same correlation id, caused by this message.
                broker.get_actor(target).send_with_options(
                    args=message.args, kwargs=message.kwargs, correlation_id=message.options.get("correlation_id"),
                    causation_id=message.message_id)
                how = f"actor:{target}"
            elif target:
                self.fallback.push(circuit, fresh_copy(message).encode())
                how = "fallback"
            else:
                # Jitter spreads the parked messages over a second or so, so they do not all
                # arrive at the instant the circuit starts letting a few trials through.
                wait = max(retry_at_ms - int(time.time() * 1000), 0) + random.randint(50, 1000)
                park(broker, message, wait)
        except Exception:
            # Parking failed: running it is better than losing it; Retries handles the outcome.
            self.logger.error("Could not park message %r for open circuit %r; running it.", message.message_id,
                              circuit, exc_info=True)
            self._run(message, circuit, False, self.policy_for(actor_options), actor_options)
            return
        self.logger.info("Circuit %r is %s: message %r parked (%s).", circuit, state.value, message.message_id, how)
        self._count(CIRCUIT_PARKED, (circuit, how))
        raise SkipMessage(f"circuit {circuit!r} is {state.value}: parked ({how})")

    def _run(self, message: Message, circuit: str, trial: bool, policy: BreakerPolicy,
             actor_options: dict[str, Any]) -> None:
        contact = None
        if actor_options.get("circuit_requires_contact"):
            contact = [False]
            DEPENDENCY_CONTACT.set(contact)  # the actor runs in this thread's context, right after
        self._running[(id(message), message.message_id)] = (circuit, trial, policy, contact)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if not self._running:  # no guarded message running in this process: no lookup
            return
        running = self._running.pop((id(message), message.message_id), None)  # per delivery; atomic
        if running is None:
            return
        circuit, trial, policy, contact = running
        if contact is not None:
            DEPENDENCY_CONTACT.set(None)
        if exception is None and contact is not None and not contact[0]:
            # It ended without calling the dependency (already done): no evidence either way.
            if trial:
                self.store.release_trial(circuit)
            return
        if exception is None:
            transition = self.store.record_success(circuit, trial)
        elif is_dependency_failure(exception):
            transition = self.store.record_failure(circuit, int(time.time() * 1000), policy)
        else:
            if trial:
                self.store.release_trial(circuit)
            return
        if transition is not None:
            self._transition(circuit, *transition)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        if not self._running:
            return
        running = self._running.pop((id(message), message.message_id), None)  # per delivery; atomic
        if running is not None:
            if running[3] is not None:
                DEPENDENCY_CONTACT.set(None)
            if running[1]:
                self.store.release_trial(running[0])

    def _transition(self, circuit: str, old: CircuitState, new: CircuitState) -> None:
        log = self.logger.warning if new is CircuitState.OPEN else self.logger.info
        log("Circuit %r: %s -> %s.", circuit, old.value, new.value)
        self._count(CIRCUIT_TRANSITIONS, (circuit, new.value))

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        if self._metrics_factory is None:
            return
        try:
            self._metrics_factory().add([(name, labels, 1)])
        except Exception:
            self.logger.debug("Could not count %s.", name, exc_info=True)
