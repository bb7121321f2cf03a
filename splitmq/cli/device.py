"""`splitmq device`: send frames through a plan's split and print one row per answer,
then a summary (also when stopped by Ctrl-C or SIGTERM, after the requests sent end)."""

from __future__ import annotations

import json
import signal
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from splitmq.cli.options import asks
from splitmq.cli.output import err, out
from splitmq.cli.root import BrokerOption, PoolOption, PrefixOption, app, settings
from splitmq.cli.serve import metrics_served
from splitmq.cli.serving import (
    ConnectTimeoutOption,
    MetricsHostOption,
    MetricsPortOption,
    ProvidersOption,
)
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.telemetry import Wants

if TYPE_CHECKING:
    from splitmq.device.report import Stream
    from splitmq.device.sources import Source
    from splitmq.shared.protocol.plan import Plan


@app.command()
@asks(fps=True)
def device(
    model: Annotated[
        str, typer.Option(help="Pool model: NAME (its newest version) or NAME@VERSION.")
    ] = "efficientnet-lite0",
    cut: Annotated[
        int | None,
        typer.Option(help="Device cut: a fixed plan \\[default: follow the planner's plan]."),
    ] = None,
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
    *,
    asked: Wants,
    battery: Annotated[
        float | None, typer.Option(help="Simulated battery charge in [0, 1].", min=0, max=1)
    ] = 1.0,
    source: Annotated[
        str,
        typer.Option(
            help="A camera (rtsp://…, http(s)://… MJPEG stream or snapshot URL, /dev/videoN; "
            "its newest frame at each --fps tick), a video file (every frame), an image file, "
            "folder, .npy, 'synthetic', or a labelled split ('fashion-mnist:test'; the "
            "summary then says the accuracy)."
        ),
    ] = "synthetic",
    frames: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Frames to send \\[default: all a file, video or folder has (with --loop, "
            "synthetic or a camera: until stopped)].",
        ),
    ] = None,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop", help="Repeat a folder, file or video until --frames are sent (or stopped)."
        ),
    ] = False,
    link: Annotated[
        str | None,
        typer.Option(
            help="Emulated link, e.g. 10mbit/20ms, or a schedule: 50mbit/10ms@0,1mbit/40ms@10s."
        ),
    ] = None,
    speed: Annotated[float, typer.Option(help="Emulated device speed vs this host (0-1].")] = 1.0,
    window: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight.")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds before a retry.")] = 10.0,
    device_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="Device id; default: the MQTT user name (SPLITMQ_USERNAME or the broker "
            "URL's), else a random one. With `splitmq secure` it must be the user name.",
        ),
    ] = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    topic_prefix: PrefixOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per answer, then a summary line.")
    ] = False,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    providers: ProvidersOption = None,
) -> None:
    """Run a device: send frames through a plan's split and print the answers.

    With --cut or --plan the plan is fixed; without, the device follows the planner's
    plan for its model (running on the device alone until one arrives) and tells the
    planner what it wants (--objective, --accuracy, --slo, --max-bytes, --fps)."""
    from splitmq.device.follow import starting_plan
    from splitmq.device.report import Stream
    from splitmq.device.runtime import Device, default_id
    from splitmq.device.sources import labels as source_labels
    from splitmq.device.sources import open_source
    from splitmq.lab.emulation import Emulated
    from splitmq.lab.link import LinkSchedule
    from splitmq.lab.summary import Summary
    from splitmq.shared.metrics import Health
    from splitmq.shared.model.plans import make_plan
    from splitmq.shared.model.pool import ModelPool, parse_ref
    from splitmq.shared.protocol.plan import load_plan_file

    cfg = settings(
        broker=broker,
        pool=pool,
        topic_prefix=topic_prefix,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
        providers=providers,
    )
    follow = plan_file is None and cut is None
    pinned = [
        flag
        for flag, given in (
            ("--codec", codec != "raw"),
            ("--tier", tier != "edge"),
            ("--cloud-cut", cloud_cut is not None),
            ("--exit", exit_threshold is not None),
        )
        if given
    ]
    if follow and pinned:
        raise UserError(
            f"{', '.join(pinned)} fix a plan: give --cut too (without --cut or --plan the "
            "device follows the planner's plan)"
        )
    family = None
    if plan_file:
        plan = load_plan_file(plan_file)
    elif follow:
        plan, family = starting_plan(ModelPool(cfg.pool), model)
    else:
        mv = ModelPool(cfg.pool).get(*parse_ref(model))
        plan = make_plan(mv, cut or 0, codec, tier, cloud_cut, exit_threshold)
    conditions = Emulated(LinkSchedule.parse(link) if link else None, speed, battery)
    dev_id = device_id or default_id(cfg)
    dev = Device(
        cfg,
        dev_id,
        plan,
        conditions=conditions,
        window=window,
        timeout_s=timeout,
        wants=asked,
        follow=follow,
        family=family,
        connect_patience_s=cfg.connect_timeout_s,
    )
    health = Health("device", dev_id, lambda: dev.client is not None and dev.client.connected)
    with (  # /healthz says 503 while the broker is awaited
        metrics_served(
            dev_id, dev.metrics.registry, cfg.metrics_port, cfg.metrics_host, health
        ) as url,
        dev,
    ):
        if url:
            err.print(f"metrics on {url}")
        pre = dev.mv.manifest.preprocess
        channels = pre.channels if pre else "RGB"
        src = open_source(source, frames, channels, loop=loop, fps=asked.fps)
        run = Stream(dev, src, asked.fps)
        summary, recent = Summary(source_labels(source)), deque[dict](maxlen=TABLE_ROWS)
        with src, _stopping(run, src):
            for row in run:
                summary.add(row)
                recent.append(row)
                if as_json:
                    print(json.dumps(row), flush=True)
    done = summary.to_json(run.submitted, dev.stats.counts["answered_after_failure"])
    done["stale"], done["skipped"] = src.stale, src.skipped  # camera frames dropped; bad files
    if unsent := dev.stats.counts["results_dropped"]:  # its own answers the broker never got
        done["results_dropped"] = unsent
    if src.note:
        err.print(f"[yellow]note:[/] {escape(src.note)}", highlight=False, soft_wrap=True)
    final = dev.plan  # a following device ends on the planner's plan
    done["plan"] = {"words": final.words, "reason": final.reason, "objective": final.objective}
    if as_json:
        print(json.dumps(done), flush=True)
    else:
        out.print(_table(dev_id, final, list(recent), done))
    if dev.plans.refused is not None:
        err.print(
            f"[yellow]warning:[/] the planner cannot plan for {final.model} v{final.version}, "
            f"so it ran on the device alone: {escape(dev.plans.refused)}",
            highlight=False,
            soft_wrap=True,
        )
    if done["failed"] or done["lost"]:
        raise typer.Exit(1)


TABLE_ROWS = 200  # the table shows the last ones; the summary counts them all


class _stopping:
    """While inside: Ctrl-C or SIGTERM stops submitting (the requests sent still end and
    are counted; a camera waiting for its next frame stops waiting); a second one stops
    at once."""

    def __init__(self, run: Stream, source: Source) -> None:
        self.run, self.source = run, source

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, self._stop)
        self.interrupt = signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self.run.stop()
        self.source.close()
        signal.signal(signal.SIGINT, self.interrupt)
        signal.signal(signal.SIGTERM, self.previous)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)
        signal.signal(signal.SIGINT, self.interrupt)


def _table(dev_id: str, plan: Plan, rows: list[dict], done: dict) -> Table:
    p50, p95 = (f"{done[k]:.1f} ms" if done[k] is not None else "-" for k in ("p50_ms", "p95_ms"))
    table = Table(
        title=f"{dev_id}: {plan.model} cut {plan.cut} {plan.codec}"
        f"{' device-only' if plan.device_only else ''}",
        caption=f"{done['frames']} frames: {done['answered']} answered, {done['failed']} failed, "
        f"{done['lost']} lost, {done['retries']} retries; p50 {p50}, p95 {p95}"
        + (f"; {done['stale']} stale camera frames dropped" if done["stale"] else "")
        + (f"; {done['skipped']} files skipped" if done["skipped"] else "")
        + (f" (the last {len(rows)} rows)" if done["frames"] > len(rows) else ""),
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
