"""`splitmq demo`: the whole system on this machine; the work is in ``demo_run``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from splitmq.cli.output import out, progress_bar
from splitmq.cli.root import BrokerOption, PoolOption, app, settings

DEFAULT_MODEL = "efficientnet-lite0-ee"  # demo_run's default, kept import-free here


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
    from splitmq.cli.demo_run import DemoOptions, run_demo

    cfg = settings(pool=pool)
    opts = DemoOptions(model, devices, frames, cut, cloud_cut, codec, exit_threshold, broker)
    with progress_bar() as bar:
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
