"""CLI commands that run the system: broker, edge, cloud, device."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from splitmq.cli import PoolOption, app, settings
from splitmq.shared.errors import SplitMQError

DEFAULT_MODEL = "efficientnet-lite0-ee"  # splitmq.demo's default, kept import-free here

log = logging.getLogger("splitmq")
out = Console(highlight=False)

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker", help="MQTT broker host:port [env: SPLITMQ_BROKER].", show_default=False
    ),
]
PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix", help="Topic prefix [env: SPLITMQ_TOPIC_PREFIX].", show_default=False
    ),
]
IdOption = Annotated[str | None, typer.Option("--id", help="Client id (default: random).")]
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


@app.command()
def device(
    model: Annotated[str, typer.Option(help="Pool model name.")] = "efficientnet-lite0",
    cut: Annotated[int | None, typer.Option(help="Device cut (default: the input, 0).")] = None,
    codec: Annotated[
        str, typer.Option(help="Codec at the cut: raw, fp16, int8, q4c+zstd, u8, jpeg:85, …")
    ] = "raw",
    tier: Annotated[str, typer.Option(help="First tier: edge or cloud.")] = "edge",
    cloud_cut: Annotated[
        int | None, typer.Option(help="Edge stops here and escalates to the cloud.")
    ] = None,
    exit_threshold: Annotated[
        float | None,
        typer.Option("--exit", help="Confidence at which the edge answers from an exit head."),
    ] = None,
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Plan JSON (overrides --cut/--codec/--tier).")
    ] = None,
    source: Annotated[
        str, typer.Option(help="Image file, folder, .npy, or 'synthetic'.")
    ] = "synthetic",
    frames: Annotated[int | None, typer.Option(min=1, help="Frames to send.")] = None,
    link: Annotated[str | None, typer.Option(help="Emulated link, e.g. 10mbit/20ms.")] = None,
    speed: Annotated[float, typer.Option(help="Emulated device speed vs this host (0-1].")] = 1.0,
    window: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight.")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds before a retry.")] = 10.0,
    device_id: IdOption = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per answer.")] = False,
) -> None:
    """Run a device: send frames through the plan's split and print the answers."""
    import uuid

    from splitmq.device.link import LinkSpec
    from splitmq.device.runtime import Device
    from splitmq.device.sources import frames as frame_source
    from splitmq.shared.model.pool import ModelPool
    from splitmq.shared.protocol.plan import load_plan_file, make_plan

    cfg = settings(broker=broker, pool=pool, topic_prefix=topic_prefix)
    if plan_file:
        plan = load_plan_file(plan_file)
    else:
        mv = ModelPool(cfg.pool).get(model)
        plan = make_plan(mv, cut or 0, codec, tier, cloud_cut, exit_threshold)
    spec = LinkSpec.parse(link) if link else None
    dev_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
    with Device(cfg, dev_id, plan, link=spec, speed=speed, window=window, timeout_s=timeout) as dev:
        pre = dev.mv.manifest.preprocess
        count = frames or (8 if source == "synthetic" else None)
        futures = [
            dev.submit(f) for f in frame_source(source, count, pre.channels if pre else "RGB")
        ]
        rows = []
        for i, fut in enumerate(futures):
            try:
                a = fut.result()
                row = {
                    "frame": i,
                    "id": a.id,
                    "tier": a.tier,
                    "exit": a.exit,
                    "top1": a.top[0].label or a.top[0].index,
                    "score": a.top[0].score,
                    "e2e_ms": a.e2e_ms,
                    "bytes": a.bytes_sent,
                    "attempts": a.attempts,
                }
            except SplitMQError as exc:
                row = {"frame": i, "error": str(exc)}
            rows.append(row)
            if as_json:
                print(json.dumps(row), flush=True)
    if not as_json:
        table = Table(
            title=f"{dev_id}: {plan.model} cut {plan.cut} {plan.codec}"
            f"{' device-only' if plan.device_only else ''}"
        )
        for col in ("frame", "tier", "top-1", "score", "e2e ms", "bytes", "note"):
            table.add_column(col)
        for r in rows:
            if "error" in r:
                table.add_row(str(r["frame"]), "", "", "", "", "", f"[red]{r['error']}[/]")
            else:
                table.add_row(
                    str(r["frame"]),
                    r["tier"],
                    str(r["top1"]),
                    f"{r['score']:.2f}",
                    f"{r['e2e_ms']:.1f}",
                    str(r["bytes"]),
                    "retried" if r["attempts"] > 1 else "",
                )
        out.print(table)
    if any("error" in r for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Pool model (built if missing).")] = DEFAULT_MODEL,
    devices: Annotated[int, typer.Option(min=1, max=32, help="Simulated devices.")] = 3,
    frames: Annotated[int, typer.Option(min=1, max=100_000, help="Frames in all.")] = 60,
    cut: Annotated[int | None, typer.Option(help="Device cut (default: block 4).")] = None,
    cloud_cut: Annotated[
        int | None, typer.Option(help="Edge → cloud cut (default: the exit head's block).")
    ] = None,
    codec: Annotated[str, typer.Option(help="Codec for the feature maps.")] = "int8",
    exit_threshold: Annotated[
        float, typer.Option("--exit", min=0, max=1, help="Edge exit confidence.")
    ] = 0.5,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The whole system on this machine: broker, edge, cloud, devices, real images."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from splitmq.demo import DemoOptions, run_demo

    cfg = settings(pool=pool)
    opts = DemoOptions(model, devices, frames, cut, cloud_cut, codec, exit_threshold, broker)
    with Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("frames answered", total=frames)
        summary = run_demo(opts, cfg, lambda n, total: bar.update(task, completed=n))
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        _print_demo(summary)
    if summary["lost"] or summary["errors"]:
        raise typer.Exit(1)


def _print_demo(s: dict) -> None:
    route = " → ".join(
        ["device"]
        + [f"{h['tier']}" + (f" (exit ≥ {h['exit']})" if h["exit"] else "") for h in s["route"]]
    )
    table = Table(
        title=f"splitmq demo: {s['model']} v{s['version']}, cut {s['cut']} "
        f"{s['codec']}, {route}, {s['devices']} devices"
    )
    table.add_column("")
    table.add_column("value", justify="right")
    for key, label in [
        ("frames", "frames"),
        ("answered", "answered"),
        ("lost", "lost"),
        ("errors", "errors"),
        ("p50_ms", "p50 end-to-end ms"),
        ("p95_ms", "p95 end-to-end ms"),
        ("bytes_per_frame", "bytes per frame"),
        ("agreement", "top-1 agreement with the unsplit model"),
        ("fps", "frames per second"),
    ]:
        table.add_row(label, str(s[key]))
    table.add_row("answers by tier", ", ".join(f"{k}: {v}" for k, v in s["by_tier"].items()))
    for tier, times in s["per_hop_ms"].items():
        table.add_row(f"{tier} (mean ms)", ", ".join(f"{k[:-3]} {v:.2f}" for k, v in times.items()))
    out.print(table)
    for message in s["error_messages"]:
        out.print(f"[red]{message}[/]")
