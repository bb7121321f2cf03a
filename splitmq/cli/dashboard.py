"""`splitmq dashboard`: the live web page over the broker and the model pool."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

import typer

from splitmq.cli.output import out
from splitmq.cli.root import BrokerOption, PoolOption, PrefixOption, app, settings
from splitmq.cli.serve import connect_patiently, metrics_served, wait_for_signal
from splitmq.cli.serving import ConnectTimeoutOption, MetricsHostOption

log = logging.getLogger("splitmq")


@app.command()
def dashboard(
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    port: Annotated[
        int, typer.Option(help="Port to serve the page on (0: any free one).", min=0, max=65535)
    ] = 8080,
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind; the page can add models to the pool, so keep "
            "it on loopback unless every user of that network may."
        ),
    ] = "127.0.0.1",
    max_upload: Annotated[str, typer.Option(help="Largest model upload, e.g. 200MB.")] = "200MB",
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another name or address browsers reach this page by (posts to any other "
            "Host are refused); repeatable."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve /healthz (and empty /metrics) on this port, for healthchecks "
            "\\[env: SPLITMQ_METRICS_PORT].",
            show_default=False,
        ),
    ] = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
) -> None:
    """A web page of the running system (devices, plans, tiers, latency, results) and of
    the model pool (cuts, uploads, an image run through a split). On a secure broker, log
    in as the monitor user (SPLITMQ_USERNAME=monitor and its password)."""
    from prometheus_client import CollectorRegistry

    from splitmq.dashboard.server import Dashboard
    from splitmq.shared.metrics import Health
    from splitmq.shared.transport.mqtt import MqttClient
    from splitmq.shared.units import parse_bytes

    cfg = settings(
        broker=broker,
        pool=pool,
        topic_prefix=topic_prefix,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
    )
    limit = parse_bytes(max_upload, "--max-upload")
    dash = Dashboard(cfg, host, port, limit, tuple(allow_host or ()))
    registry = CollectorRegistry()  # nothing of its own to export: /healthz is the point
    health = Health("dashboard", "dashboard", lambda: dash.feed is not None and dash.feed.connected)
    with (
        contextlib.closing(dash),  # its port is bound already
        metrics_served("dashboard", registry, cfg.metrics_port, cfg.metrics_host, health),
    ):
        with contextlib.closing(MqttClient(cfg.connection())) as probe:
            connect_patiently(probe, cfg)  # the dashboard's feed connects once this did
        dash.start()
        out.print(
            f"dashboard on {dash.url} (broker {cfg.where}, pool {cfg.pool}); Ctrl-C stops",
            soft_wrap=True,
        )
        wait_for_signal()
        log.info("stopping the dashboard")
