"""CLI commands that run the serving side: broker, edge, cloud."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from splitmq.cli.root import BrokerOption, IdOption, PoolOption, PrefixOption, app, settings

log = logging.getLogger("splitmq")

ThreadsOption = Annotated[
    int, typer.Option("--workers", min=1, max=64, help="Inference threads of this worker.")
]
QueueOption = Annotated[
    int, typer.Option("--queue", min=0, max=1024, help="Requests held beyond the busy threads.")
]


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM; roles then stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 1883,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    data_dir: Annotated[Path | None, typer.Option(help="Persistence directory.")] = None,
) -> None:
    """Run mosquitto in the foreground with the project's mosquitto.conf."""
    from splitmq.broker.launcher import run_foreground

    raise typer.Exit(run_foreground(port=port, host=host, data_dir=data_dir))


def _serve(tier: str, worker_id, broker_, pool, prefix, workers, queue, results=None) -> None:
    cfg = settings(broker=broker_, pool=pool, topic_prefix=prefix)
    if tier == "edge":
        from splitmq.edge.worker import edge_worker

        worker = edge_worker(cfg, worker_id, workers, queue)
    else:
        from splitmq.cloud.worker import cloud_worker

        worker = cloud_worker(cfg, worker_id, workers, queue, results)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    with worker:
        log.info(
            "%s worker %s on %s (pool %s); Ctrl-C stops", tier, worker.id, cfg.broker, cfg.pool
        )
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
) -> None:
    """Edge worker: continue devices' requests, exit early, escalate to the cloud."""
    _serve("edge", worker_id, broker, pool, topic_prefix, workers, queue)


@app.command()
def cloud(
    worker_id: IdOption = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    workers: ThreadsOption = 2,
    queue: QueueOption = 8,
    results: Annotated[
        Path | None, typer.Option(help="Append every answer to this JSON-lines file.")
    ] = None,
) -> None:
    """Cloud worker: run final segments; optionally keep a results store."""
    _serve("cloud", worker_id, broker, pool, topic_prefix, workers, queue, results)
