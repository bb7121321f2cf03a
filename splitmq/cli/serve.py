"""CLI commands that run the serving side: broker, edge, cloud."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from splitmq.cli.root import BrokerOption, IdOption, PoolOption, PrefixOption, app, settings
from splitmq.cli.serving import (
    ConnectTimeoutOption,
    MaxBatchOption,
    MaxQueueDelayOption,
    MetricsHostOption,
    MetricsPortOption,
    ProvidersOption,
    QueueOption,
    ResultsOption,
    SiteOption,
    ThreadsOption,
)
from splitmq.shared.metrics import DEFAULT_HOST, Health

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from splitmq.shared.settings import Settings
    from splitmq.shared.transport.mqtt import MqttClient

log = logging.getLogger("splitmq")


@contextmanager
def metrics_served(
    role_id: str,
    registry: CollectorRegistry,
    port: int | None,
    host: str = DEFAULT_HOST,
    health: Health | None = None,
) -> Iterator[str | None]:
    """A role's metrics on /metrics (and its ``health`` on /healthz) while inside, if a
    port is given: yields (and logs) the URL."""
    from splitmq.shared.metrics import serving

    with serving(registry, port, host, health) as server:
        if server:
            log.info("metrics of %s on %s", role_id, server.url)
        yield server.url if server else None


def connect_patiently(client: MqttClient, cfg: Settings) -> None:
    """Connect a role's client before the role starts, waiting for a broker that is not
    up yet (``--connect-timeout``); the role's own connect then finds it connected."""
    timeout = cfg.connect_timeout_s
    log.info(
        "connecting to %s (waiting %s)",
        cfg.where,
        "forever" if timeout is None else f"{timeout:g} s",
    )
    client.connect(patience_s=timeout)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM; roles then stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Plain MQTT port.", min=1, max=65535)] = 1883,
    host: Annotated[
        str,
        typer.Option(
            help="Address other hosts reach the broker at: the plain port's, or with "
            "--secure the TLS port's. Beyond loopback it needs --secure (or --insecure)."
        ),
    ] = "127.0.0.1",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Persistence directory: by default ~/.cache/splitmq/broker, or as root "
            "/var/lib/splitmq/broker (handed to the mosquitto user it drops to)."
        ),
    ] = None,
    secure: Annotated[
        Path | None,
        typer.Option(
            help="A `splitmq secure init` directory: users, ACLs and TLS on --host; the "
            "plain port then serves loopback only, for development on this host."
        ),
    ] = None,
    tls_port: Annotated[
        int, typer.Option(help="TLS port (with --secure).", min=1, max=65535)
    ] = 8883,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve other hosts without --secure: no users, no ACL, no TLS (a warning).",
        ),
    ] = False,
    site: SiteOption = None,
    bridge: Annotated[
        str | None,
        typer.Option(help="The cloud broker, mqtts://host:8883 \\[default: the login's]."),
    ] = None,
    bridge_login: Annotated[
        Path | None,
        typer.Option(help="The site's login file from `splitmq secure add-site` on the cloud."),
    ] = None,
) -> None:
    """Run mosquitto in the foreground with the project's mosquitto.conf; with --site,
    bridged to the cloud broker (docs/operations.md, sites)."""
    from splitmq.broker.bridge import Bridge
    from splitmq.broker.supervise import run_foreground

    cfg = settings(site=site, bridge=bridge, bridge_login=bridge_login)
    link = None
    if site is not None or cfg.bridge is not None or cfg.bridge_login is not None:
        if cfg.site is None or cfg.bridge_login is None:
            raise typer.BadParameter(
                "a bridge needs --site NAME and --bridge-login FILE (from `splitmq secure "
                "add-site NAME` on the cloud broker's directory)",
                param_hint="--site",
            )
        link = Bridge.load(cfg.site, cfg.bridge_login, cfg.bridge)
    code = run_foreground(
        port=port,
        host=host,
        data_dir=data_dir,
        secure=secure,
        tls_port=tls_port,
        insecure=insecure,
        bridge=link,
    )
    raise typer.Exit(code)


def _serve(tier: str, worker_id, workers, queue, speed=1.0, **given: object) -> None:
    """Run a ``tier`` worker until a signal; ``given``: the settings its flags named."""
    from splitmq.cloud.results import Recorder
    from splitmq.edge.worker import edge_worker
    from splitmq.shared.runtime.worker import Worker

    # Each tier's own wiring: the edge adds its frame ingress, the cloud runs the worker as is.
    wiring: dict[str, Callable[..., Worker]] = {
        "edge": edge_worker,
        "cloud": functools.partial(Worker, tier="cloud"),
    }
    cfg = settings(**given)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    with contextlib.ExitStack() as stack:  # the recorder closes last, whatever failed first
        recorder = Recorder(cfg.results) if cfg.results else None
        if recorder:  # closed after the worker stopped: its last answers are kept
            stack.callback(recorder.close)
            log.info("recording answers in the results store %s", recorder.store.url)
        options: dict[str, Any] = {
            "threads": workers,
            "queue_size": queue,
            "on_result": recorder.add if recorder else None,
        }
        if speed < 1:  # an emulated slower server
            from splitmq.lab.speed import slowed

            options["executor"] = slowed(speed)
        worker = wiring[tier](cfg, worker_id=worker_id, **options)
        client = worker.client
        health = Health(tier, worker.id, lambda: client.connected)
        stack.enter_context(
            metrics_served(
                worker.id, worker.metrics.registry, cfg.metrics_port, cfg.metrics_host, health
            )
        )  # /healthz says 503 while the broker is awaited
        stack.callback(client.close)  # should the worker fail to start once connected
        connect_patiently(client, cfg)
        stack.enter_context(worker)
        log.info("%s worker %s on %s (pool %s); Ctrl-C stops", tier, worker.id, cfg.where, cfg.pool)
        wait_for_signal()
        log.info("stopping %s", worker.id)


@app.command()
def edge(
    worker_id: IdOption = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    workers: ThreadsOption = 2,
    queue: QueueOption = 8,
    speed: Annotated[
        float, typer.Option(help="Emulated server speed vs this host (0-1].", min=0.01, max=1)
    ] = 1.0,
    results: ResultsOption = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    site: SiteOption = None,
    providers: ProvidersOption = None,
    max_batch: MaxBatchOption = None,
    max_queue_delay: MaxQueueDelayOption = None,
) -> None:
    """Edge worker: continue devices' requests, exit early, escalate to the cloud."""
    _serve(  # at a site, it also measures the WAN to the cloud tier
        "edge",
        worker_id,
        workers,
        queue,
        speed,
        broker=broker,
        pool=pool,
        topic_prefix=topic_prefix,
        results=results,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
        site=site,
        providers=providers,
        max_batch=max_batch,
        max_queue_delay=max_queue_delay,
    )


@app.command()
def cloud(
    worker_id: IdOption = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    workers: ThreadsOption = 2,
    queue: QueueOption = 8,
    results: ResultsOption = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    providers: ProvidersOption = None,
    max_batch: MaxBatchOption = None,
    max_queue_delay: MaxQueueDelayOption = None,
) -> None:
    """Cloud worker: run the final segments of what the edge escalated."""
    _serve(
        "cloud",
        worker_id,
        workers,
        queue,
        broker=broker,
        pool=pool,
        topic_prefix=topic_prefix,
        results=results,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
        providers=providers,
        max_batch=max_batch,
        max_queue_delay=max_queue_delay,
    )


@app.command()
def planner(
    planner_id: IdOption = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    dwell: Annotated[
        str, typer.Option(help="Least time a plan stays unless it broke, e.g. 10s.")
    ] = "10s",
    gain: Annotated[
        float, typer.Option(help="Predicted improvement worth a switch (0.1 = 10%).", min=0)
    ] = 0.1,
    cloud_link: Annotated[
        str | None,
        typer.Option(help="Link broker <-> cloud workers, BANDWIDTH/RTT \\[default: beside it]."),
    ] = None,
    edge_link: Annotated[
        str | None,
        typer.Option(help="Link broker <-> edge workers, BANDWIDTH/RTT \\[default: beside it]."),
    ] = None,
    edge_speed: Annotated[
        float, typer.Option(help="Edge hosts' speed vs the profile's, until measured.", min=0.01)
    ] = 1.0,
    cloud_speed: Annotated[
        float, typer.Option(help="Cloud hosts' speed vs the profile's, until measured.", min=0.01)
    ] = 1.0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    site: SiteOption = None,
) -> None:
    """Planner: read every role's telemetry, publish each device's plan, move devices
    as links, batteries, load and tiers change."""
    from splitmq.planner.control import Control
    from splitmq.planner.service import PlannerService
    from splitmq.shared.units import Link, parse_ms

    cfg = settings(
        broker=broker,
        pool=pool,
        topic_prefix=topic_prefix,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
        site=site,
    )
    links = {
        tier: Link.parse(text, f"--{tier}-link")
        for tier, text in (("edge", edge_link), ("cloud", cloud_link))
        if text is not None
    }
    control = Control(gain=gain, dwell_s=parse_ms(dwell, "--dwell") / 1000)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    speeds = {"edge": edge_speed, "cloud": cloud_speed}
    service = PlannerService(cfg, planner_id, control=control, links=links, speeds=speeds)
    client = service.client
    health = Health("planner", service.id, lambda: client.connected)
    registry = service.metrics.registry
    with (
        metrics_served(service.id, registry, cfg.metrics_port, cfg.metrics_host, health),
        contextlib.closing(client),  # should the planner fail to start once connected
    ):
        connect_patiently(client, cfg)
        with service:
            log.info("planner %s on %s (pool %s); Ctrl-C stops", service.id, cfg.where, cfg.pool)
            wait_for_signal()
            log.info("stopping %s", service.id)
