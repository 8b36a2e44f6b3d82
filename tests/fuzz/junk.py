"""Junk that a producer which is not atelier's can put on a queue, for the fuzz suite.

Two kinds: message bodies built as JSON by hand (so any field can have any type, which Dramatiq's
own Message would not let a test build), and raw bytes that are not a message at all. Bodies start
from a plausible message for one declared actor (found by introspection: a new actor is covered
without editing this file) and get one to three mutations, each named, so a failure says what made
the message junk.

Everything here is pure: it builds bytes, it sends nothing.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

HUGE = "x" * 100_000  # a 100 kB string
#: Strings that stores and encoders tend to choke on: NUL, a lone surrogate, a long emoji run,
#: SQL and format specifiers, a non-breaking space.
NASTY_STRINGS = ("\x00", "a\x00b", "\ud800", "x\udfffy", "😀" * 300, "' OR 1=1 --", "%s%s%n{0}", "\u00a0",
                 "\u202e", "")
DEEP_MARKER = "__fuzz_deep__"


@dataclass(frozen=True)
class ActorInfo:
    """What the generators need to know of a declared actor."""

    name: str
    queue: str
    params: tuple[str, ...]  # positional-or-keyword parameter names, in order
    required: int  # how many of them have no default
    annotations: tuple[Any, ...]
    derives_dedup_key: bool = False  # its dedup_key option is a function of the arguments

    @property
    def arity(self) -> range:
        return range(self.required, len(self.params) + 1)


def actor_infos(broker: Any) -> dict[str, ActorInfo]:
    """Every actor the broker declares, with its signature."""
    infos = {}
    for name, actor in sorted(broker.actors.items()):
        params = [p for p in inspect.signature(actor.fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        infos[name] = ActorInfo(
            name=name, queue=actor.queue_name, params=tuple(p.name for p in params),
            required=sum(1 for p in params if p.default is p.empty),
            annotations=tuple(p.annotation for p in params),
            derives_dedup_key=callable(actor.options.get("dedup_key")))
    return infos


@dataclass(frozen=True)
class Delivery:
    """One delivery to put on a queue: ``body`` as the broker would hold it."""

    queue: str
    body: bytes
    label: str  # what makes it junk, e.g. "route_message: args_count+option_typed(retries)"
    actor: str = ""
    notes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        body = self.body if len(self.body) <= 600 else self.body[:600] + b"...(%d bytes)" % len(self.body)
        return f"Delivery({self.label!r}, queue={self.queue!r}, body={body!r})"


def fresh_id() -> str:
    return f"fz-{uuid.uuid4()}"


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(fields: dict[str, Any], deep: int = 0) -> bytes:
    """JSON as Dramatiq writes it (NaN and Infinity allowed); ``deep`` replaces the string
    DEEP_MARKER with a list nested that deep (built as text: json.dumps would hit the recursion
    limit of the test's own stack)."""
    text = json.dumps(fields, separators=(",", ":"), allow_nan=True)
    if deep:
        text = text.replace(json.dumps(DEEP_MARKER), "[" * deep + "0" + "]" * deep, 1)
    return text.encode("utf-8", "surrogatepass")


def body(actor: ActorInfo, args: list[Any], **fields: Any) -> dict[str, Any]:
    """A message body for ``actor`` as Dramatiq encodes one, with a fresh id."""
    return {"queue_name": actor.queue, "actor_name": actor.name, "args": args, "kwargs": {}, "options": {},
            "message_id": fresh_id(), "message_timestamp": now_ms(), **fields}


# --- values -------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(),
    st.text(max_size=30), st.sampled_from(NASTY_STRINGS),
)
#: Any JSON value, nested a little, NaN and infinities included.
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)
#: Values that are junk for any parameter: wrong types, 100 kB, non-finite, nested.
junk_values = st.one_of(
    json_values, st.just(HUGE), st.sampled_from([float("nan"), float("inf"), float("-inf"), 2**70, -(2**63) - 1]),
    st.lists(json_values, min_size=1, max_size=3), st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


def plausible(annotation: Any) -> st.SearchStrategy[Any]:
    """A value of the right type for a parameter: an id that names nothing, an event without payload."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if "dict" in text:
        return st.sampled_from([{"payload": {}}, {"payload": {"image_id": str(uuid.uuid4())}}, {}])
    return st.one_of(st.uuids().map(str), st.sampled_from(["whatsapp", "instagram", "all"]))


# --- mutations ----------------------------------------------------------------------------------
# Each takes (draw, fields, actor, others, state) and edits ``fields`` (the body dict) or ``state``
# (the queue to put it on, the nesting depth, the raw edits), and returns a short label.

#: Options Dramatiq or atelier read, each with values of the wrong type or out of range.
OPTION_JUNK: dict[str, list[Any]] = {
    "retries": ["abc", -1.5, 2**70, None, [1], float("nan")],
    "max_retries": [-1.5, "abc", 2**70, float("inf"), [0]],
    "min_backoff": ["x", -1.5, 2**70, {}],
    "max_backoff": ["x", 1e400, [1]],
    "eta": ["x", 1.5, 2**70, None, {}, [0]],
    "max_age": ["x", float("nan"), [1], {}],
    "time_limit": ["slow", float("nan"), float("inf"), [1]],
    "dedup_key": [5, ["k"], {"k": 1}, 1.5],
    "dedup_window": ["x", float("nan"), float("inf"), [1]],
    "correlation_id": [5, ["c"], {"c": 1}, 1.5, True],
    "causation_id": [5, ["c"], {}],
    "circuit": [5, ["c"], {}],
    "circuit_failure_threshold": ["x", float("nan"), [1]],
    "circuit_window": ["x", [1]],
    "circuit_reset_timeout": ["x", float("inf")],
    "circuit_half_open_trials": ["x", [1]],
    "requeue_timestamp": ["x", 1.5, [1]],
    "redis_message_id": [5, ["r"], {}],
    "dead_letter_attempts": ["x", 1.5, [1], 2**70],
    "retry_after_ms": ["x", float("nan")],
}
#: Options whose values are of the right type but at the edge of what makes sense.
OPTION_EDGE: dict[str, list[Any]] = {
    "max_retries": [0, -1, 2**62],
    "retries": [2**62, -5, 1_000_000],
    "min_backoff": [0, -1000],
    "max_backoff": [0, -1000, 2**62],
    "max_age": [1, -1, 0],
    "time_limit": [1, -1, 0.001, 1e300],
    "dedup_key": [HUGE, "", "\x00", "\ud800"],
    "dedup_window": [-1, 0, 1e300, 0.001],
    "correlation_id": [HUGE, "", "\x00c", "\ud800"],
    "causation_id": [HUGE, ""],
    "circuit": ["x" * 1000, "", "\ud800"],
    "circuit_failure_threshold": [0, -1, 1e300],
    "circuit_reset_timeout": [0, -1, 1e300],
    "eta": [-1, 0, "now-1s", "now+300ms"],  # the strings are replaced by times below
    "dead_letter_expired": ["no", 0, None, []],
    "notify_shutdown": ["yes", [1]],
}
#: Dramatiq's own message options: types it cannot use, or names of actors to chain to.
DRAMATIQ_OPTIONS: dict[str, list[Any]] = {
    "throws": ["ValueError", 5, ["TypeError"], {}],
    "on_success": ["no_such_actor", 5, "<actor>"],
    "on_failure": ["no_such_actor", 5, "<actor>"],
    "on_retry_exhausted": ["no_such_actor", 5, "<actor>"],
    "pipe_target": ["x", 5, {"queue_name": "q"}, "<message>"],
    "pipe_ignore": ["yes", [1]],
    "retry_when": ["x"],
}
#: Options atelier's middleware set for themselves, forged by a producer.
INTERNAL_OPTIONS: dict[str, list[Any]] = {
    "dead_letter": ["x", 5, [], {}, {"reason": "forged"}, "<letter>"],
    "dead_letter_attempts": [5, -1, 2**40],
    "failed_because": [5, "", ["permanent"], "x" * 100, {"a": 1}],
    "retry_enqueue_error": [5, HUGE],
    "traceback": [5, HUGE],
    "redis_message_id": ["", HUGE, "other-id"],
    "requeue_timestamp": [-1, 2**62],
}


def _forged_letter(actor: ActorInfo) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "message_id": fresh_id(), "actor": actor.name, "queue": actor.queue,
            "args": [], "kwargs": {}, "options": {}, "error_type": "x", "error": "forged", "traceback": "",
            "reason": "forged", "attempts": 0, "enqueued_at": "2024-01-01T00:00:00+00:00",
            "failed_at": "2024-01-01T00:00:00+00:00"}


def _resolve(value: Any, actor: ActorInfo, others: list[ActorInfo], draw: Callable) -> Any:
    if value == "<actor>":
        return draw(st.sampled_from(others)).name
    if value == "<message>":
        other = draw(st.sampled_from(others))
        return body(other, ["not-an-id"])
    if value == "<letter>":
        return _forged_letter(actor)
    if value == "now-1s":
        return now_ms() - 1000
    if value == "now+300ms":
        return now_ms() + 300
    return value


def _set_option(table: dict[str, list[Any]]):  # type: ignore[no-untyped-def]
    def mutate(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
        name = draw(st.sampled_from(sorted(table)))
        value = _resolve(draw(st.sampled_from(table[name])), actor, others, draw)
        if isinstance(fields.get("options"), dict):
            fields["options"][name] = value
        return f"{name}={value!r:.40}"
    return mutate


def _args_count(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    wrong = [n for n in range(0, 5) if n not in actor.arity]
    n = draw(st.sampled_from(wrong))
    fields["args"] = draw(st.lists(st.one_of(plausible(str), json_values), min_size=n, max_size=n))
    return f"{n} args"


def _args_types(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    if not actor.params:
        fields["args"] = draw(st.lists(junk_values, min_size=1, max_size=2))
        return "args to an actor that takes none"
    fields["args"] = [draw(junk_values) for _ in actor.params[:max(actor.required, 1)]]
    return "wrong types"


def _args_not_list(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["args"] = draw(st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.text(max_size=5),
                                    st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
    return f"args={fields['args']!r:.30}"


def _unknown_kwarg(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    name = draw(st.one_of(st.sampled_from(["force", "image", "id", "", "__class__", "self", "**"]),
                          st.text(max_size=12)).filter(lambda n: n not in actor.params))
    if isinstance(fields.get("kwargs"), dict):
        fields["kwargs"][name] = draw(json_values)
    return f"kwarg {name!r}"


def _kwarg_duplicate(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    if not actor.params or not isinstance(fields.get("kwargs"), dict):
        return _unknown_kwarg(draw, fields, actor, others, state)
    fields["args"] = [draw(plausible(a)) for a in actor.annotations]
    fields["kwargs"][actor.params[0]] = draw(plausible(actor.annotations[0]))
    return f"{actor.params[0]} given twice"


def _kwargs_not_dict(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["kwargs"] = draw(st.one_of(st.none(), st.lists(json_values, max_size=2), st.text(max_size=5),
                                      st.integers()))
    return f"kwargs={fields['kwargs']!r:.30}"


def _id_long(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["message_id"] = fresh_id() + draw(st.sampled_from(["i", "é", "\x00", "😀", "\ud800"])) * 1000
    return "1000-char id"


def _id_type(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["message_id"] = draw(st.one_of(
        st.just([fresh_id()]), st.integers(min_value=10**12, max_value=10**15), st.none(), st.just(""),
        st.just({"id": fresh_id()}), st.floats(min_value=1e12, max_value=1e15), st.booleans(),
        st.just(fresh_id() + "\ud800"), st.just(fresh_id() + "\x00")))
    return f"id={fields['message_id']!r:.40}"


def _timestamp(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["message_timestamp"] = draw(st.sampled_from(["x", -1, 1.5, 2**70, None, float("nan"), [1], 10**17]))
    return f"timestamp={fields['message_timestamp']!r}"


def _queue_other(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["queue_name"] = draw(st.one_of(st.sampled_from([o.queue for o in others]),
                                          st.sampled_from(["no_such_queue", "", "x.DQ", 5, None, HUGE[:300],
                                                           "q\ud800"])))
    return f"names queue {fields['queue_name']!r:.30}"


def _actor_unknown(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["actor_name"] = draw(st.sampled_from(["no_such_actor", "", 5, None, ["route_message"], HUGE,
                                                 "atelier.dead_letter_carrier", "Route_Message", "a\ud800",
                                                 "a\x00b"]))
    return f"actor {fields['actor_name']!r:.30}"


def _actor_other(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    other = draw(st.sampled_from(others))
    fields["actor_name"] = other.name
    return f"names actor {other.name} on {actor.queue}"


def _on_other_queue(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    state["queue"] = draw(st.sampled_from([o.queue for o in others if o.queue != actor.queue] or [actor.queue]))
    return f"put on {state['queue']}"


def _on_delay_queue(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    state["queue"] = f"{actor.queue}.DQ"
    return "put on the delay queue without an eta"


def _options_not_dict(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields["options"] = draw(st.one_of(st.none(), st.lists(json_values, max_size=2), st.text(max_size=5),
                                       st.integers()))
    return f"options={fields['options']!r:.30}"


def _option_unknown(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    name = draw(st.text(min_size=1, max_size=12))
    if isinstance(fields.get("options"), dict):
        fields["options"][name] = draw(junk_values)
    return f"unknown option {name!r}"


def _huge(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    where = draw(st.sampled_from(["args", "kwargs", "options"]))
    if where == "args" and isinstance(fields.get("args"), list):
        fields["args"] = [HUGE for _ in fields["args"]] or [HUGE]
    elif isinstance(fields.get(where), dict):
        fields[where]["huge"] = HUGE
    return f"100 kB string in {where}"


def _nonfinite(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    if isinstance(fields.get("args"), list) and fields["args"]:
        fields["args"][draw(st.integers(0, len(fields["args"]) - 1))] = value
    else:
        fields["args"] = [value]
    return f"{value} argument"


def _nested(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    depth = draw(st.sampled_from([30, 200, 900, 990]))
    state["deep"] = depth
    fields["args"] = [DEEP_MARKER] + (fields["args"][1:] if isinstance(fields.get("args"), list) else [])
    return f"argument nested {depth} deep"


def _nasty_text(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    text = draw(st.sampled_from(NASTY_STRINGS))
    if isinstance(fields.get("args"), list) and fields["args"]:
        fields["args"][0] = text
    else:
        fields["args"] = [text]
    return f"argument {text[:10]!r}"


def _extra_field(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    fields[draw(st.sampled_from(["priority", "delay", "Queue_name", "x"]))] = draw(json_values)
    return "unknown top-level field"


def _missing_field(draw, fields, actor, others, state) -> str:  # type: ignore[no-untyped-def]
    name = draw(st.sampled_from(["queue_name", "actor_name", "args", "kwargs", "options", "message_id",
                                 "message_timestamp"]))
    fields.pop(name, None)
    return f"no {name}"


MUTATIONS: dict[str, Callable[..., str]] = {
    "args_count": _args_count, "args_types": _args_types, "args_not_list": _args_not_list,
    "unknown_kwarg": _unknown_kwarg, "kwarg_duplicate": _kwarg_duplicate, "kwargs_not_dict": _kwargs_not_dict,
    "id_long": _id_long, "id_type": _id_type, "timestamp": _timestamp,
    "queue_other": _queue_other, "actor_unknown": _actor_unknown, "actor_other": _actor_other,
    "on_other_queue": _on_other_queue, "on_delay_queue": _on_delay_queue,
    "option_typed": _set_option(OPTION_JUNK), "option_edge": _set_option(OPTION_EDGE),
    "option_dramatiq": _set_option(DRAMATIQ_OPTIONS), "option_internal": _set_option(INTERNAL_OPTIONS),
    "options_not_dict": _options_not_dict, "option_unknown": _option_unknown,
    "huge": _huge, "nonfinite": _nonfinite, "nested": _nested, "nasty_text": _nasty_text,
    "extra_field": _extra_field, "missing_field": _missing_field,
}


@st.composite
def junk_deliveries(draw, actors: dict[str, ActorInfo]) -> Delivery:  # type: ignore[no-untyped-def]
    """A message body for one declared actor, made junk by one to three named mutations."""
    actor = actors[draw(st.sampled_from(sorted(actors)))]
    others = [a for a in actors.values() if a.name != actor.name] or [actor]
    fields = body(actor, [draw(plausible(a)) for a in actor.annotations[:actor.required]])
    state: dict[str, Any] = {"queue": actor.queue, "deep": 0}
    kinds = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3, unique=True))
    labels = [f"{kind}({MUTATIONS[kind](draw, fields, actor, others, state)})" for kind in kinds]
    return Delivery(state["queue"], encode(fields, state["deep"]), f"{actor.name}: {' + '.join(labels)}",
                    actor=actor.name)


@st.composite
def raw_deliveries(draw, actors: dict[str, ActorInfo]) -> Delivery:  # type: ignore[no-untyped-def]
    """Bytes that are not a message: binary, invalid UTF-8, JSON that is not an object, truncated
    bodies, 100 kB of text."""
    actor = actors[draw(st.sampled_from(sorted(actors)))]
    good = encode(body(actor, []))
    kind, data = draw(st.one_of(
        st.tuples(st.just("binary"), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("invalid utf-8"), st.binary(max_size=40).map(lambda b: b"\xff\xfe" + b + b"\xc3(")),
        st.tuples(st.just("json, not an object"),
                  json_values.filter(lambda v: not isinstance(v, dict)).map(
                      lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))),
        st.tuples(st.just("truncated body"), st.integers(1, len(good) - 1).map(lambda n: good[:n])),
        st.tuples(st.just("100 kB of text"), st.just(HUGE.encode())),
        st.tuples(st.just("empty"), st.just(b"")),
        st.tuples(st.just("utf-16 body"), st.just(good.decode().encode("utf-16"))),
        st.tuples(st.just("deep json"), st.sampled_from([990, 5000]).map(lambda d: b"[" * d + b"]" * d)),
    ))
    return Delivery(actor.queue, data, f"{actor.name} queue: raw {kind}", actor=actor.name)


# --- named cases ----------------------------------------------------------------------------------
# One per class of junk the issue names; used by the parametrized stub tests and, a subset, by the
# real-broker runs.

def named_cases(actors: dict[str, ActorInfo]) -> dict[str, Delivery]:
    """A fixed set of junk deliveries, by name. Actors are picked by shape, so the set keeps working
    as actors come and go."""
    one_arg = next(a for a in actors.values() if len(a.params) == 1 and "dict" not in str(a.annotations[0]))
    two_args = next((a for a in actors.values() if len(a.params) == 2), one_arg)
    no_args = next(a for a in actors.values() if not a.params)
    keyed = next((a for a in actors.values() if a.derives_dedup_key and a.params), one_arg)
    uid = str(uuid.uuid4())

    def case(actor: ActorInfo, args: Any, queue: str | None = None, deep: int = 0, **fields: Any) -> Delivery:
        return Delivery(queue or actor.queue, encode(body(actor, args, **fields), deep), "", actor=actor.name)

    cases = {
        "too_many_args": case(one_arg, [uid, uid, uid]),
        "too_few_args": case(two_args, []),
        "args_to_no_arg_actor": case(no_args, ["x"]),
        "unknown_keyword": case(one_arg, [uid], kwargs={"force": True}),
        "keyword_given_twice": case(one_arg, [uid], kwargs={one_arg.params[0]: uid}),
        "int_argument": case(one_arg, [5]),
        "list_argument": case(one_arg, [[uid]]),
        "args_not_a_list": case(one_arg, 5),
        "kwargs_not_an_object": case(one_arg, [uid], kwargs=[1]),
        "id_1000_chars": case(one_arg, [uid], message_id=fresh_id() + "i" * 1000),
        "id_a_list": case(one_arg, [uid], message_id=[fresh_id()]),
        "id_an_int": case(one_arg, [uid], message_id=int(uuid.uuid4().int % 10**15)),
        "id_lone_surrogate": case(one_arg, [uid], message_id=fresh_id() + "\ud800"),
        "id_with_nul": case(one_arg, [uid], message_id=fresh_id() + "\x00"),
        "timestamp_a_string": case(one_arg, [uid], message_timestamp="yesterday"),
        "huge_string_argument": case(one_arg, [HUGE]),
        "nan_argument": case(one_arg, [float("nan")]),
        "infinite_argument": case(two_args, [float("inf"), float("-inf")]),
        "nested_junk_argument": case(one_arg, [{"a": [[{"b": [None, float("nan"), {"c": HUGE[:1000]}]}]]}]),
        "deeply_nested_argument": case(one_arg, [DEEP_MARKER], deep=990),
        "nul_and_surrogate_argument": case(two_args, ["a\x00b", "x\ud800y"]),
        "retries_abc": case(one_arg, [uid], options={"retries": "abc"}),
        "eta_x": case(one_arg, [uid], options={"eta": "x"}),
        "max_retries_negative_float": case(one_arg, [uid], options={"max_retries": -1.5}),
        "time_limit_slow": case(one_arg, [uid], options={"time_limit": "slow"}),
        "dedup_window_x": case(one_arg, [uid], options={"dedup_window": "x"}),
        "correlation_id_5": case(one_arg, [uid], options={"correlation_id": 5}),
        "options_not_an_object": case(one_arg, [uid], options=["x"]),
        "correlation_id_lone_surrogate": case(one_arg, ["not-an-id"], options={"correlation_id": "c\ud800"}),
        "option_value_lone_surrogate": case(one_arg, ["not-an-id"], options={"note": "\ud800"}),
        "option_name_lone_surrogate": case(one_arg, ["not-an-id"], options={"\ud800": 1}),
        "keyword_name_lone_surrogate": case(one_arg, [uid], kwargs={"\ud800": 1}),
        "dedup_key_lone_surrogate": case(one_arg, [uid], options={"dedup_key": "k\ud800"}),
        "lone_surrogate_in_an_argument_of_the_dedup_key": case(keyed, ["x\ud800"] * len(keyed.params)),
        "circuit_lone_surrogate": case(two_args, [uid, "whatsapp"], options={"circuit": "c\ud800"}),
        "throws_a_string": case(one_arg, ["not-an-id"], options={"throws": "ValueError"}),
        "forged_dead_letter_option": case(one_arg, [uid], options={"dead_letter": {"reason": "forged"}}),
        "expired_with_a_junk_dead_letter_option": case(one_arg, [uid], options={"max_age": 1, "dead_letter": []}),
        "failed_because_an_int": case(one_arg, ["not-an-id"], options={"failed_because": 5}),
        "names_another_queue": case(one_arg, [uid], queue_name=no_args.queue if no_args.queue != one_arg.queue
                                    else "elsewhere"),
        "names_a_queue_that_does_not_exist": case(one_arg, [uid], queue_name="no_such_queue"),
        "unknown_actor": case(one_arg, [uid], actor_name="no_such_actor"),
        "actor_name_an_int": case(one_arg, [uid], actor_name=5),
        "actor_name_lone_surrogate": case(one_arg, [uid], actor_name="a\ud800"),
        "actor_named_like_a_carrier": case(one_arg, [uid], actor_name="atelier.dead_letter_carrier"),
        "on_the_delay_queue_without_eta": case(one_arg, [uid], queue=f"{one_arg.queue}.DQ"),
        "raw_not_json": Delivery(one_arg.queue, b"\x00\x01not json\xff", "", actor=one_arg.name),
        "raw_json_array": Delivery(one_arg.queue, b"[1, 2, 3]", "", actor=one_arg.name),
        "raw_json_missing_fields": Delivery(one_arg.queue, b'{"actor_name": "%s"}' % one_arg.name.encode(), "",
                                           actor=one_arg.name),
        "raw_empty": Delivery(one_arg.queue, b"", "", actor=one_arg.name),
        "raw_100kb": Delivery(one_arg.queue, HUGE.encode(), "", actor=one_arg.name),
    }
    return {name: Delivery(d.queue, d.body, f"{name} ({d.actor})", actor=d.actor) for name, d in cases.items()}


#: The names of the named cases (computed on a catalog of one actor per shape).
CASE_NAMES = tuple(named_cases({
    "one": ActorInfo("one", "q1", ("a",), 1, (str,), derives_dedup_key=True),
    "two": ActorInfo("two", "q2", ("a", "b"), 2, (str, str)),
    "none": ActorInfo("none", "q3", (), 0, ()),
}))
