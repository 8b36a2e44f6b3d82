"""Metrics shared across processes, and the Prometheus collector the ops server scrapes.

Workers add to counters in a MetricsStore (Redis hashes, HINCRBY: the Metrics middleware sums in
memory and writes once a second in one transaction); the ops server reads them at scrape time.
Figures from any number of worker processes and hosts add up, with no per-process files to merge
and nothing lost when a container goes away. Gauges (pending outbox events, breaker states, queue
lengths, ...) are read at scrape time from the stores that own them, through the list of
MetricSpec on the container.

Why not prometheus-client's multiprocess mode (what Dramatiq's own Prometheus middleware uses):
it merges mmap files in one directory, so it only adds up processes on one host sharing a
filesystem, and compose runs workers as separate containers (replicas, possibly hosts).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from domain.ports import MetricsStore
from runtime.metrics import (
    DURATION,
    DURATION_BUCKETS,
    ERRORS,
    MESSAGE_LABELS,
    MESSAGES,
    REJECTS,
    RETRIES,
    SKIPPED,
    bucket_label,
)

log = structlog.get_logger(__name__)

_SEP = "\x1f"  # between label values in a hash field; never part of a queue or actor name

class InMemoryMetricsStore:
    """One process only: the embedded default (StubBroker, no Redis)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        self._lock = threading.Lock()

    def add(self, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None:
        with self._lock:
            for name, labels, amount in samples:
                self._data[name][tuple(labels)] += amount

    def read(self, name: str) -> dict[tuple[str, ...], float]:
        with self._lock:
            return dict(self._data.get(name, {}))


class RedisMetricsStore:
    """One Redis hash per metric (field: label values); every process adds, the ops server reads."""

    def __init__(self, client, namespace: str) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.namespace = namespace

    def _key(self, name: str) -> str:
        return f"{self.namespace}{name}"

    def add(self, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None:
        # MULTI/EXEC: a write that fails leaves nothing half-added, so the caller can retry it all.
        pipe = self.client.pipeline(transaction=True)
        for name, labels, amount in samples:
            field = _SEP.join(labels)
            if float(amount).is_integer():
                pipe.hincrby(self._key(name), field, int(amount))
            else:
                pipe.hincrbyfloat(self._key(name), field, amount)
        pipe.execute()

    def read(self, name: str) -> dict[tuple[str, ...], float]:
        raw = self.client.hgetall(self._key(name))
        out: dict[tuple[str, ...], float] = {}
        for field, value in raw.items():
            text = field.decode() if isinstance(field, bytes) else field
            out[tuple(text.split(_SEP)) if text else ()] = float(value)
        return out

    def clear(self) -> None:
        """Delete this namespace's metrics (tests, a deliberate reset)."""
        keys = list(self.client.scan_iter(f"{self.namespace}*"))
        if keys:
            self.client.delete(*keys)


Reading = Mapping[tuple[str, ...], float] | float


@dataclass(frozen=True)
class MetricSpec:
    """One metric family read at scrape time. ``read`` returns a number (no labels) or a mapping
    of label values (in ``labels`` order) to numbers; it may raise, which the scrape reports."""

    name: str
    kind: Literal["counter", "gauge"]
    documentation: str
    read: Callable[[], Reading]
    labels: tuple[str, ...] = ()


def store_counter(store: MetricsStore, name: str, documentation: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    """A counter that processes add to through the MetricsStore, exposed as it stands."""
    return MetricSpec(name, "counter", documentation, lambda: store.read(name), labels)


def dramatiq_metrics(store: MetricsStore) -> list[MetricSpec]:
    """The counters the Metrics middleware records, under Dramatiq's names."""
    return [
        store_counter(store, MESSAGES, "The total number of messages processed.", MESSAGE_LABELS),
        store_counter(store, ERRORS, "The total number of errored messages.", MESSAGE_LABELS),
        store_counter(store, RETRIES, "The total number of retried messages.", MESSAGE_LABELS),
        store_counter(store, REJECTS, "The total number of dead-lettered messages.", MESSAGE_LABELS),
        store_counter(store, SKIPPED, "Messages skipped by middleware (dedup windows, age limits).",
                      MESSAGE_LABELS),
    ]


def _family(spec: MetricSpec) -> Metric:
    value = spec.read()
    cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
    family = cls(spec.name, spec.documentation, labels=list(spec.labels))
    if isinstance(value, Mapping):
        for labels, number in sorted(value.items()):
            if len(labels) != len(spec.labels):
                raise ValueError(f"{spec.name}: labels {labels!r} do not match {spec.labels!r}")
            family.add_metric(list(labels), float(number))
    else:
        family.add_metric([], float(value))
    return family


def _histogram(store: MetricsStore) -> Metric:
    buckets = store.read(f"{DURATION}_bucket")
    sums = store.read(f"{DURATION}_sum")
    series: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (queue_name, actor_name, le), count in buckets.items():
        series[(queue_name, actor_name)][le] = count
    family = HistogramMetricFamily(DURATION, "The time spent processing messages.", labels=list(MESSAGE_LABELS))
    for labels in sorted(series):
        cumulative, points = 0.0, []
        for upper in DURATION_BUCKETS:
            cumulative += series[labels].get(bucket_label(upper), 0.0)
            points.append((bucket_label(upper), cumulative))
        family.add_metric(list(labels), points, sum_value=sums.get(labels, 0.0))
    return family


class AtelierCollector(Collector):
    """Collects at scrape time: Dramatiq's counters and histogram from the MetricsStore, then every
    MetricSpec. A source that fails is left out and named in atelier_scrape_errors."""

    def __init__(self, store: MetricsStore, specs: Callable[[], Iterable[MetricSpec]]) -> None:
        self.store = store
        self.specs = specs

    def collect(self) -> Iterator[Metric]:
        failed: list[str] = []
        try:
            yield _histogram(self.store)
        except Exception:  # one broken source must not hide the others
            log.warning("metric source failed", metric=DURATION, exc_info=True)
            failed.append(DURATION)
        for spec in [*dramatiq_metrics(self.store), *self.specs()]:
            try:
                family = _family(spec)
            except Exception:
                log.warning("metric source failed", metric=spec.name, exc_info=True)
                failed.append(spec.name)
                continue
            yield family
        errors = GaugeMetricFamily("atelier_scrape_errors", "1 for each metric whose source failed in this scrape.",
                                   labels=["metric"])
        for name in failed:
            errors.add_metric([name], 1.0)
        yield errors
