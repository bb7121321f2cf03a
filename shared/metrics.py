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
role runs, and its ``Health`` on ``/healthz``; every metric is listed in
docs/operations.md, Metrics.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitmq.shared.errors import UserError

#: Where metrics and /healthz are served unless the ``metrics_host`` setting says otherwise.
DEFAULT_HOST = "127.0.0.1"
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

    def _histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = ()
    ) -> Histogram:
        """A histogram of seconds (``LATENCY_BUCKETS``), or of what ``buckets`` count."""
        return Histogram(
            name, doc, labels, buckets=buckets or LATENCY_BUCKETS, registry=self.registry
        )

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` reports: the role, its id, whether it is connected to its broker.

    A healthcheck (compose, Kubernetes, a load balancer) reads the status code: 200
    while connected, 503 while not, e.g. waiting for the broker at start.
    """

    role: str
    id: str
    connected: Callable[[], bool]

    def report(self) -> tuple[HTTPStatus, dict[str, object]]:
        up = bool(self.connected())
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        return status, {"role": self.role, "id": self.id, "connected": up}


def _with_health(metrics: Any, health: Health | None) -> Any:
    """A WSGI app: ``/healthz`` from ``health`` (404 without one), every other path metrics."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        status, doc = (
            health.report()
            if health is not None
            else (HTTPStatus.NOT_FOUND, {"error": "this server has no health check"})
        )
        body = json.dumps(doc).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(f"{status.value} {status.phrase}", headers)
        return [body]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and healthchecks every few seconds would flood the log."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """A registry on ``http://ADDR:PORT/metrics`` and, with ``health``, ``/healthz`` beside
    it, from a thread of its own, until ``close``.

    Loopback by default: an exporter has no authentication, so binding every interface
    (``0.0.0.0``, what a container publishing the port needs) is the operator's choice.
    Port 0 takes any free port: ``port`` says which.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        addr: str = DEFAULT_HOST,
        health: Health | None = None,
    ) -> None:
        server = _Server6 if ":" in addr else _Server
        app = _with_health(make_wsgi_app(registry), health)
        try:
            self._httpd: WSGIServer = make_server(addr, port, app, server, handler_class=_Quiet)
        except (OSError, UnicodeError) as exc:  # busy port, unknown host, bad address
            reason = getattr(exc, "strerror", None) or exc
            raise UserError(f"cannot serve metrics on {addr}:{port}: {reason}") from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"metrics-{port}", daemon=True
        )
        self._thread.start()
        self.port: int = self._httpd.server_port
        shown = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{shown}:{self.port}/metrics"
        self.health_url = f"http://{shown}:{self.port}/healthz" if health else None

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serving(
    registry: CollectorRegistry,
    port: int | None,
    addr: str = DEFAULT_HOST,
    health: Health | None = None,
) -> Iterator[MetricsServer | None]:
    """``registry`` (and ``health``) served on ``addr:port`` while inside (port None: not
    served)."""
    if port is None:
        yield None
        return
    with MetricsServer(registry, port, addr, health) as server:
        yield server
