"""`splitmq device`: send frames through a plan's split and print one row per answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from splitmq.cli.output import out
from splitmq.cli.root import BrokerOption, IdOption, PoolOption, PrefixOption, app, settings

if TYPE_CHECKING:
    from splitmq.shared.protocol.plan import Plan


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
    from splitmq.device.report import stream
    from splitmq.device.runtime import Device
    from splitmq.device.sources import frames as frame_source
    from splitmq.shared.model.plans import make_plan
    from splitmq.shared.model.pool import ModelPool
    from splitmq.shared.protocol.plan import load_plan_file

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
        rows = []
        for row in stream(dev, frame_source(source, count, pre.channels if pre else "RGB")):
            rows.append(row)
            if as_json:
                print(json.dumps(row), flush=True)
    if not as_json:
        out.print(_table(dev_id, plan, rows))
    if any("error" in r for r in rows):
        raise typer.Exit(1)


def _table(dev_id: str, plan: Plan, rows: list[dict]) -> Table:
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
    return table
