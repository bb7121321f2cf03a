"""`splitmq plan`: what the planner would choose for a device in a given situation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from splitmq.cli.options import asks, flag
from splitmq.cli.output import human, out, print_json
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref, settings
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.telemetry import Wants

if TYPE_CHECKING:
    from splitmq.planner import Decision
    from splitmq.shared.protocol.plan import Option


@app.command()
@asks()
def plan(
    model: ModelArg,
    uplink: Annotated[str, typer.Option(help="Device uplink, e.g. 5mbit, 500kbit.")],
    rtt: Annotated[str, typer.Option(help="Round trip device <-> broker, e.g. 40ms.")] = "20ms",
    downlink: Annotated[
        str | None, typer.Option(help="Device downlink \\[default: as the uplink].")
    ] = None,
    device_speed: Annotated[
        float, typer.Option(help="Device speed vs the profile's host, in (0, 1].")
    ] = 1.0,
    *,
    asked: Wants,
    battery: Annotated[
        float | None, typer.Option(help="Battery charge in [0, 1] (below 0.2: plan for energy).")
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Requests/s this device adds to a tier's load.", min=0)
    ] = 0.0,
    tiers: Annotated[
        str, typer.Option(help="Tiers that are up: edge,cloud, edge, cloud or none.")
    ] = "edge,cloud",
    edge_threads: Annotated[
        int, typer.Option(help="Inference threads of the edge tier.", min=1)
    ] = 2,
    edge_speed: Annotated[float, typer.Option(help="Edge speed vs the profile's host.")] = 1.0,
    edge_load: Annotated[
        float, typer.Option(help="Share of the edge's threads other devices keep busy.", min=0)
    ] = 0.0,
    cloud_threads: Annotated[
        int, typer.Option(help="Inference threads of the cloud tier.", min=1)
    ] = 2,
    cloud_speed: Annotated[float, typer.Option(help="Cloud speed vs the profile's host.")] = 1.0,
    cloud_load: Annotated[
        float, typer.Option(help="Share of the cloud's threads other devices keep busy.", min=0)
    ] = 0.0,
    cloud_link: Annotated[
        str, typer.Option(help="Link broker <-> cloud workers, BANDWIDTH/RTT.")
    ] = "100mbit/20ms",
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Choose a plan for a device in a what-if situation: every cut, codec, route and exit
    threshold weighed by the cost model, with alternatives and the fixed strategies."""
    from splitmq.api import plan as what_if
    from splitmq.shared.units import Link, parse_ms, parse_rate

    # The situation is checked before a model loads: a missing unit fails at once.
    for rate_flag, text in (("--uplink", uplink), ("--downlink", downlink)):
        if text is not None:
            parse_rate(text, rate_flag)
    parse_ms(rtt, "--rtt")
    Link.parse(cloud_link, "--cloud-link")
    up = () if tiers == "none" else tuple(t.strip() for t in tiers.split(","))
    cfg = settings(pool=pool)
    family = model in ModelPool(cfg.pool).families()
    decision = what_if(
        model if family else open_ref(model, pool)[1],
        uplink=uplink,
        rtt=rtt,
        downlink=downlink,
        device_speed=device_speed,
        asked=asked,
        battery=battery,
        rate=rate,
        tiers=up,
        edge_threads=edge_threads,
        edge_speed=edge_speed,
        edge_load=edge_load,
        cloud_threads=cloud_threads,
        cloud_speed=cloud_speed,
        cloud_load=cloud_load,
        cloud_link=cloud_link,
        settings=cfg,
        name_of=flag,
    )
    if as_json:
        print_json(decision.to_json())
        return
    chosen = f"{decision.plan.model} v{decision.plan.version}"
    out.print(_table(f"{model}: {chosen}" if family else chosen, decision))
    out.print(decision.plan.reason, soft_wrap=True)
    if decision.members:
        out.print(_members(model, decision))


def _route(option: Option) -> str:
    if option.device_only:
        return "device only"
    hops = []
    for hop in option.route:
        step: str = hop.tier
        if hop.to is not None:
            step += f" → cut {hop.to}"
            if hop.exit is not None:
                step += f", exit ≥ {hop.exit:g}"
            step += f", {hop.codec}"
        hops.append(step)
    return " ⇒ ".join(hops)


def _members(family: str, decision: Decision) -> Table:
    """The best plan of every member of the family that was not chosen."""
    table = Table(title=f"{family}: the best plan of each other member")
    for col in ("member", "plan", "latency ms", "bytes", "energy mJ", "agreement"):
        table.add_column(col, justify="left" if col in ("member", "plan") else "right")
    for name, other in decision.members.items():
        p = other.predicted
        assert p is not None
        table.add_row(
            f"{name} v{other.version}",
            other.words,
            f"{p.latency_ms:.1f}",
            human(p.bytes),
            f"{p.energy_mj:.1f}",
            f"{p.agreement:.1%}",
        )
    return table


def _table(title: str, decision: Decision) -> Table:
    table = Table(
        title=f"{title}: plan for {decision.objective} ({decision.considered:,} options weighed)"
    )
    for col in ("", "cut", "codec", "route", "latency ms", "bytes", "energy mJ", "agreement"):
        table.add_column(col, justify="left" if col in ("", "codec", "route") else "right")
    rows: list[tuple[str, Option]] = [("plan", decision.plan)]
    rows += [(f"alt {i}", alt) for i, alt in enumerate(decision.plan.alternatives, 1)]
    for label, option in rows:
        p = option.predicted
        assert p is not None
        table.add_row(
            f"[bold]{label}[/]" if label == "plan" else label,
            str(option.cut),
            "" if option.device_only else option.codec,
            _route(option),
            f"{p.latency_ms:.1f}",
            human(p.bytes),
            f"{p.energy_mj:.1f}",
            f"{p.agreement:.1%}",
        )
    for label, p in decision.fixed.items():
        table.add_row(
            f"[dim]{label}[/]",
            "",
            "",
            "",
            f"{p.latency_ms:.1f}",
            human(p.bytes),
            f"{p.energy_mj:.1f}",
            f"{p.agreement:.1%}",
        )
    return table
