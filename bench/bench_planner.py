"""The planner against measured oracles, over a real broker and edge worker.

For every point of the sweep (uplink x RTT x device speed) the planner
chooses a plan for EfficientNet-Lite0 from the profile and calibration
table alone; then the p50 end-to-end latency of that plan and of a set of
candidates is *measured*: a device (emulated link and speed, one request at
a time) sends real photo crops through `splitmq edge` (its own process, one
inference thread) on a real mosquitto. The candidates are device-only, the
`u8`, `u8+zstd` and `jpeg:Q` inputs, every 4th calibrated cut with
`int8+zstd` and `q4+zstd`, and the planner's top 3 alternatives; only those
the calibration table measured at or above the accuracy floor count. The
oracle is the best measured.

A candidate whose transfer time alone (bytes at the link rate plus the RTT)
is over ``SKIP`` times the best measured so far cannot be the oracle and is
not measured: its ratio is reported as at least that bound.

    .venv/bin/python bench/bench_planner.py [--quick] [--frames 9] [--json FILE] [--plot FILE]
    .venv/bin/python bench/bench_planner.py --from FILE     # report and plot saved results
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from oracle import (
    accuracy_of,
    as_plan,
    candidate,
    fixed_ratio,
    fixed_ratios,
    grid,
    measure,
    oracle_of,
    parser,
    point_cells,
    points_of,
    preprocess_ms,
    print_table,
    sweep,
    worst_by_fixed,
)

from splitmq.planner import DeviceState, Link, Options, TierState, decide, evaluate
from splitmq.planner.options import EDGE
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.datasets import photos
from splitmq.shared.protocol.telemetry import Wants
from splitmq.shared.settings import Settings

MODEL = "efficientnet-lite0"
UPLINKS = (0.5e6, 2e6, 10e6, 50e6, 200e6)
RTTS = (5.0, 40.0)
SPEEDS = (0.1, 0.25, 1.0)
QUICK = [(2e6, 40.0, 0.25), (50e6, 5.0, 0.1), (0.5e6, 5.0, 1.0)]
CUT_CODECS = ("int8+zstd", "q4+zstd")
INPUTS = ("u8", "u8+zstd", "jpeg:50", "jpeg:75", "jpeg:85", "jpeg:95")
PLOT = Path(__file__).parent.parent / "docs" / "planner-sweep.png"


def fixed_candidates(mv: ModelVersion, floor: float) -> list[tuple[str, int, str]]:
    """(name, cut, codec) of the fixed strategies meeting the floor (cut -1: device-only)."""
    table = mv.manifest.calibration
    assert table is not None
    cuts = sorted({r.cut for r in table.fidelity if r.cut > 0})
    out = [("device-only", -1, "")]
    pairs = [(0, c) for c in INPUTS] + [(c, k) for c in cuts[3::4] for k in CUT_CODECS]
    for cut, codec in pairs:
        row = table.row(cut, codec)
        if row is not None and row.agreement >= floor:
            out.append((f"input {codec}" if cut == 0 else f"cut {cut} {codec}", cut, codec))
    return out


def candidates(mv, options, costs, decision, link: Link, floor):
    result = []
    for name, cut, codec in fixed_candidates(mv, floor):
        if cut < 0:
            plan, row = make_plan(mv, mv.last_cut, "raw"), options.DEVICE_ONLY
        else:
            plan, row = make_plan(mv, cut, codec, "edge"), options.find(EDGE, cut, codec)
        result.append(candidate(name, plan, costs, row, link, True))
    chosen = [("plan", decision.plan)] + [
        (f"alt {i}", alt) for i, alt in enumerate(decision.plan.alternatives[:3], 1)
    ]
    for name, option in chosen:
        row = options.locate(option)
        result.append(candidate(name, as_plan(mv, option), costs, row, link, False))
    return result


def run_point(cfg, mv, options, frames, up_bps, rtt, speed, args) -> dict:
    device = DeviceState(speed=speed, link=Link(up_bps, rtt), preprocess_ms=args.preprocess_ms)
    tiers = {"edge": TierState("edge", servers=1)}
    wants = Wants()
    started = time.perf_counter()
    decision = decide(options, device, tiers, wants)
    decide_ms = (time.perf_counter() - started) * 1000
    costs = evaluate(options, device, tiers, wants.accuracy)
    cands = candidates(mv, options, costs, decision, device.link, wants.accuracy)
    measure(cands, cfg, Link(up_bps, rtt), speed, frames, args.frames)
    oracle = oracle_of(cands)
    plan = next(c for c in cands if c.name == "plan")
    return {
        "uplink_bps": up_bps,
        "rtt_ms": rtt,
        "speed": speed,
        "decide_ms": round(decide_ms, 2),
        "plan": {
            "cut": decision.plan.cut,
            "codec": decision.plan.codec,
            "route": [h.tier for h in decision.plan.route],
            "predicted_ms": round(plan.predicted_ms, 2),
            "measured_ms": round(plan.measured_ms, 2),
        },
        "oracle": {
            "name": oracle.name,
            "cut": oracle.plan.cut,
            "codec": oracle.plan.codec,
            "measured_ms": round(oracle.measured_ms, 2),
        },
        "ratio": round(plan.measured_ms / oracle.measured_ms, 3),
        "error": round(abs(plan.predicted_ms - plan.measured_ms) / plan.measured_ms, 3),
        "fixed": fixed_ratios(cands, oracle),
        "candidates": [c.to_json() for c in cands],
    }


def summarise(points: list[dict]) -> dict:
    worst_fixed = worst_by_fixed(points)
    best_name = next(iter(worst_fixed))
    return {
        **accuracy_of(points),
        "best_fixed": best_name,
        "best_fixed_worst_ratio": worst_fixed[best_name],
        "worst_ratio_by_fixed": worst_fixed,
    }


def plot(points: list[dict], path: Path) -> None:
    """Top: measured latency / oracle for the planner and the fixed strategies.
    Bottom: the planner's predicted and measured latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = summarise(points)["worst_ratio_by_fixed"]
    best_cut = next(name for name in worst if name.startswith("cut "))
    shown = {"device-only": "tab:red", "input u8": "tab:blue", best_cut: "tab:green"}
    fig, axes = plt.subplots(2, len(SPEEDS), figsize=(15, 8), sharex=True)
    for col, speed in enumerate(SPEEDS):
        top, bottom = axes[0][col], axes[1][col]
        for rtt, style in zip(RTTS, ("-", "--")):
            mine = sorted(
                (p for p in points if p["speed"] == speed and p["rtt_ms"] == rtt),
                key=lambda p: p["uplink_bps"],
            )
            x = [p["uplink_bps"] / 1e6 for p in mine]
            top.plot(
                x,
                [p["ratio"] for p in mine],
                style,
                color="black",
                marker="o",
                label=f"planner, RTT {rtt:g} ms",
            )
            for name, color in shown.items():
                top.plot(
                    x,
                    [fixed_ratio(p, name) for p in mine],
                    style,
                    color=color,
                    marker=".",
                    alpha=0.8,
                    label=f"{name}, RTT {rtt:g} ms",
                )
            bottom.plot(
                x,
                [p["plan"]["measured_ms"] for p in mine],
                style,
                color="black",
                marker="o",
                label=f"measured, RTT {rtt:g} ms",
            )
            bottom.plot(
                x,
                [p["plan"]["predicted_ms"] for p in mine],
                style,
                color="tab:orange",
                marker="x",
                label=f"predicted, RTT {rtt:g} ms",
            )
        top.set_yscale("log")
        top.axhline(1.1, color="grey", lw=0.8, ls=":")
        top.set_title(f"device speed {speed:g}")
        bottom.set_xscale("log")
        bottom.set_yscale("log")
        bottom.set_xlabel("uplink (Mbit/s)")
    axes[0][0].set_ylabel("p50 latency / best measured")
    axes[1][0].set_ylabel("planner's plan: p50 latency (ms)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    axes[1][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"{MODEL}: the planner's choice against fixed strategies, through a real edge worker"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(points: list[dict]) -> None:
    columns = ("uplink", "RTT", "speed", "plan", "pred ms", "meas ms", "oracle", "oracle ms")
    rows = [
        [
            *point_cells(p),
            f"{p['plan']['cut']} {p['plan']['codec']}",
            f"{p['plan']['predicted_ms']:.1f}",
            f"{p['plan']['measured_ms']:.1f}",
            f"{p['oracle']['cut']} {p['oracle']['codec']}",
            f"{p['oracle']['measured_ms']:.1f}",
            f"{p['ratio']:.3f}",
            f"{p['error']:.1%}",
        ]
        for p in points
    ]
    print_table(f"{MODEL}: planner vs measured oracle", (*columns, "ratio", "error"), rows)
    print(json.dumps(summarise(points), indent=1))


def run(args) -> list[dict]:
    pool_dir = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    mv = ModelPool(pool_dir).get(MODEL)
    options = Options.of(mv, prune=False)
    frames = photos(12, seed=7)
    args.preprocess_ms = preprocess_ms(mv, frames)

    def point(cfg, up, rtt, speed):
        return run_point(cfg, mv, options, frames, up, rtt, speed, args)

    def line(p):
        return f"ratio {p['ratio']:.3f}, error {p['error']:.1%}"

    return sweep(pool_dir, grid(args, QUICK, UPLINKS, RTTS, SPEEDS), point, line)


def main() -> None:
    args = parser(__doc__, PLOT).parse_args()
    points = points_of(args, lambda: run(args), summarise)
    if not args.quick:
        plot(points, args.plot)
    report(points)


if __name__ == "__main__":
    sys.exit(main())
