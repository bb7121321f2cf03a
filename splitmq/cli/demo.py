"""`splitmq demo`: the whole system on this machine; the work is in ``lab.demo``."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from splitmq.cli.output import err, out, progress_bar
from splitmq.cli.results import DEMO_STORE
from splitmq.cli.root import BrokerOption, PoolOption, app, settings

if TYPE_CHECKING:
    from splitmq.lab.demo import Stop

DEFAULT_MODEL = "efficientnet-lite0-ee"  # lab.demo's default, kept import-free here


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
    fixed: Annotated[
        bool,
        typer.Option(
            "--fixed",
            help="Every device runs the fixed plan of --cut/--cloud-cut (implied by them) "
            "instead of following the planner.",
        ),
    ] = False,
    scenario: Annotated[
        str | None,
        typer.Option(help="Watch the planner react: link-drop, edge-failure, crowd, battery."),
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="How long a scenario streams.", min=5)
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="TLS with a throwaway CA, a user per role and device, and the ACL "
            "(what `splitmq secure init` sets up for real).",
        ),
    ] = False,
    results: Annotated[
        str | None,
        typer.Option(
            "--results",
            help="Record every answer in this results store, for `splitmq results` "
            f"(default: the SPLITMQ_RESULTS setting, else ./{DEMO_STORE}).",
            show_default=False,
        ),
    ] = None,
    dashboard: Annotated[
        int | None,
        typer.Option(
            help="Serve the live dashboard on this port while the demo runs (0: any free "
            "one; its address is printed); more --frames give more time to watch.",
            min=0,
            max=65535,
        ),
    ] = None,
    broker: BrokerOption = None,
    pool: PoolOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The whole system on this machine: broker, edge, cloud, planner, devices, real images.

    Devices follow the planner's plans (each starts on its own until the planner,
    knowing its link, sends one); --fixed (or --cut) pins one plan for all. A
    --scenario streams for a while and changes something mid-run. Other runs record
    every answer in ./splitmq-results.db, or the store SPLITMQ_RESULTS or --results
    names: `splitmq results` lists them."""
    from splitmq.lab.demo import DemoOptions, Stop, run_demo

    cfg = settings(pool=pool, results=results)
    if scenario is not None:
        from splitmq.lab.scenarios import run_scenario

        if secure:
            raise typer.BadParameter(
                "a --scenario runs on an open local broker", param_hint="--secure"
            )
        with err.status(f"scenario {scenario} …"):
            summary = run_scenario(scenario, cfg, broker, seconds)
        if as_json:
            print(json.dumps(summary, indent=1))
        else:
            _print_scenario(summary)
        failed = [k for k, c in summary["checks"].items() if not c["ok"]]
        if summary["lost"] or failed:
            raise typer.Exit(1)
        return
    planner = not (fixed or cut is not None or cloud_cut is not None)
    opts = DemoOptions(
        model,
        devices,
        frames,
        cut,
        cloud_cut,
        codec,
        exit_threshold,
        broker,
        planner,
        secure,
        cfg.results or DEMO_STORE,  # the demo always records: `splitmq results` then shows it
        dashboard,
    )
    stop = Stop()
    with progress_bar() as bar, stopping(stop):
        task = bar.add_task("frames answered", total=frames)
        summary = run_demo(
            opts,
            cfg,
            lambda n, total: bar.update(task, completed=n),
            lambda url: err.print(f"dashboard on {url}", highlight=False),
            stop,
        )
    if stop.requested.is_set():
        err.print(f"stopped: {summary['frames']} of {frames} frames sent, each ended below")
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        _print_demo(summary)
    if summary["lost"] or summary["errors"]:
        raise typer.Exit(1)


@contextmanager
def stopping(stop: Stop) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM during the stream stop the demo sending: what it
    sent ends and its summary is printed, rather than dying mid-stream; before the
    stream they interrupt it as usual (nothing was sent yet)."""

    def handle(signum: int, frame: object) -> None:
        if not stop.streaming.is_set() or stop.requested.is_set():
            raise KeyboardInterrupt  # before the stream, or asked twice: stop at once
        stop.requested.set()

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _print_demo(s: dict) -> None:
    if "plans" in s:
        title = (
            f"splitmq demo: {s['model']} v{s['version']}, "
            f"{s['devices']} devices following the planner"
        )
    else:
        route = " → ".join(
            ["device"]
            + [f"{h['tier']}" + (f" (exit ≥ {h['exit']})" if h["exit"] else "") for h in s["route"]]
        )
        title = (
            f"splitmq demo: {s['model']} v{s['version']}, cut {s['cut']} "
            f"{s['codec']}, {route}, {s['devices']} devices"
        )
    table = Table(title=title)
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
    for device, plan in s.get("plans", {}).items():
        table.add_row(f"plan of {device}", plan)
    out.print(table)
    _print_switches(s.get("switches", []))
    for message in s["error_messages"]:
        out.print(f"[red]{message}[/]")
    if s.get("results"):
        out.print(f"answers recorded in {s['results']}: `splitmq results` lists them")


def _print_switches(switches: list[dict]) -> None:
    if not switches:
        return
    table = Table(title="plan switches")
    for col in ("t (s)", "device", "from", "to", "reason"):
        table.add_column(col, justify="right" if col == "t (s)" else "left")
    for sw in switches:
        table.add_row(f"{sw['t_s']:.2f}", sw["device"], sw["from"], sw["to"], sw["reason"])
    out.print(table)


def _print_scenario(s: dict) -> None:
    table = Table(title=f"splitmq demo --scenario {s['scenario']}: {s['devices']} devices")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("frames", "answered", "lost", "errors", "p50_ms", "p95_ms"):
        table.add_row(key.replace("_ms", " ms"), str(s[key]))
    table.add_row("answers by tier", ", ".join(f"{k}: {v}" for k, v in s["by_tier"].items()))
    for device, plan in s["plans"].items():
        table.add_row(f"plan of {device}", plan)
    for name, check in s["checks"].items():
        mark = "[green]ok[/]" if check["ok"] else "[red]MISSED[/]"
        table.add_row(name.replace("_", " "), f"{check['value']} (target {check['target']}) {mark}")
    out.print(table)
    _print_switches(s["switches"])
    for message in s["error_messages"]:
        out.print(f"[red]{message}[/]")
