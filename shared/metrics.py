"""What every role's Prometheus metrics share: a registry per role and its server.

A role's own metrics live beside it (``shared.runtime.metrics`` for workers,
``device.metrics``, ``planner.metrics``); this module is what they build on,
so no role imports another's runtime for it. What a role counts anyway (its
telemetry document, its ``Stats``) is read when Prometheus scrapes, so the
metrics and the telemetry never disagree; what telemetry has no room for
(latency histograms, bytes, plan changes by kind) is observed where it
happens. Each role object owns its registry (``worker.metrics.registry``), so
several roles in one process (the tests, the demo) never collide as they would
on the global registry. ``MetricsServer`` serves one on ``/metrics`` while a
role runs; every metric is listed in docs/operations.md, Metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitmq.shared.errors import UserError

#: Seconds: from a tiny model's 1 ms hop to a request that waited out a retry.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Read(Collector):
    """Metric families computed at each scrape from what the role keeps anyway."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    values: Mapping[tuple[str, ...], float],
    labels: Sequence[str] = (),
) -> Metric:
    """A family of ``kind`` holding ``values``, by their label values."""
    family = kind(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


counter_family = partial(_family, CounterMetricFamily)
gauge_family = partial(_family, GaugeMetricFamily)


class RoleMetrics:
    """A registry of one role's own, and what every role's metrics share."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Read(read))

    def _histogram(self, name: str, doc: str, labels: Sequence[str]) -> Histogram:
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)


class MetricsServer:
    """A registry on ``http://ADDR:PORT/metrics``, from a thread of its own, until ``close``.

    Port 0 takes any free port: ``port`` says which.
    """

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr, registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from None
        self.port: int = self._httpd.server_port
        self.url = f"http://{addr}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serving(registry: CollectorRegistry, port: int | None) -> Iterator[MetricsServer | None]:
    """``registry`` served on ``port`` while inside (port None: not served)."""
    if port is None:
        yield None
        return
    with MetricsServer(registry, port) as server:
        yield server
