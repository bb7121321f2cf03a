"""The planner against measured oracles for a model family: which member, and where to cut.

For every point of the sweep (uplink x RTT x device speed) the planner chooses
(member, cut, codec, tier) for the Fashion-MNIST family from the members'
profiles, calibrations and measured qualities alone, the way the planner service
does (``planner.members.best_plans``, then ``choose``), with one edge worker (one
inference thread) as the only tier. Then the p50 end-to-end latency of its plan
and of every candidate is *measured*, as in ``bench_planner.py``: a device
(emulated link and speed, one request at a time) sends Fashion-MNIST test images
through a real mosquitto to ``splitmq edge`` in its own process. Candidates, for
every member that can meet the floor: device-only, the ``u8``, ``u8+zstd`` and
``jpeg:95`` inputs, three calibrated cuts with ``int8+zstd`` and ``q4+zstd``, and
the member's best plan; only those meeting the floor as the planner counts it for
that member (``floor + 1 - agreement`` of its own). The oracle is the best
measured. Each point also reports the best measured plan of the default member
(the float full-size model) against the best of any other member, and what the
planner chooses at full and at low battery.

The members are copied from the pool (``SPLITMQ_POOL``) into a scratch pool first:
partitions are built and cached on first use, and the pool is only read.

    .venv/bin/python bench/bench_families.py [--quick] [--frames 9] [--floor 0.95] [--json FILE]
    .venv/bin/python bench/bench_families.py --from FILE     # report saved results
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import oracle

from splitmq.planner import DeviceState, Link, Options, TierState, decide
from splitmq.planner.decide import assess
from splitmq.planner.members import Member, best_plans, choose
from splitmq.planner.options import EDGE
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.datasets import fashion_mnist
from splitmq.shared.protocol.plan import Option
from splitmq.shared.protocol.telemetry import Wants
from splitmq.shared.settings import Settings

FAMILY = "fashion-mnist"
DEFAULT = "fashion-mnist-ee"  # the float full-size member: what ran before families
UPLINKS = (0.5e6, 2e6, 10e6, 50e6, 200e6)
RTTS = (5.0, 40.0)
SPEEDS = (0.02, 0.05, 0.1, 0.25, 1.0)
QUICK = [(2e6, 40.0, 0.1), (50e6, 5.0, 0.02), (0.5e6, 5.0, 1.0)]
FLOOR = 0.95  # agreement with the family's reference: low enough for the small members
INPUTS = ("u8", "u8+zstd", "jpeg:95")
CUT_CODECS = ("int8+zstd", "q4+zstd")
BATTERY = {"full": 1.0, "low": 0.1}
FIRST_IMAGE = 5000  # test images past those the members' qualities were measured on


@dataclass(frozen=True)
class Family:
    mvs: dict[str, ModelVersion]
    members: dict[str, Member]  # the options the planner decides from (Pareto-pruned)
    every: dict[str, Options]  # every measured codec: for costing the fixed candidates


def short(member: str) -> str:
    return member.removeprefix(f"{FAMILY}-")


def words(member: str, option: Option) -> str:
    where = "device-only" if option.device_only else f"{option.cut} {option.codec}"
    return f"{short(member)} {where}"


def fixed_plans(mv: ModelVersion, options: Options):
    """(name, plan, row) of a member's fixed strategies (row None: not an option)."""
    yield "device-only", make_plan(mv, mv.last_cut, "raw"), options.DEVICE_ONLY
    table = mv.manifest.calibration
    assert table is not None
    cuts = sorted({r.cut for r in table.fidelity if r.cut > 0})
    picked = [cuts[len(cuts) * k // 4] for k in (1, 2, 3)]
    pairs = [(0, c) for c in INPUTS] + [(c, k) for c in picked for k in CUT_CODECS]
    for cut, codec in pairs:
        name = f"input {codec}" if cut == 0 else f"cut {cut} {codec}"
        yield name, make_plan(mv, cut, codec, "edge"), options.find(EDGE, cut, codec)


def planned(family: Family, device: DeviceState, tiers, wants: Wants):
    """The members' best plans and the member chosen, as the planner service does."""
    choices = best_plans(family.members, wants, lambda o, w: decide(o, device, tiers, w))
    return choices, choose(choices, None, 0.0)


def candidates(family: Family, choices, device: DeviceState, tiers) -> list:
    out = []
    link = device.link
    assert link is not None
    for name, choice in choices.items():
        mv, every = family.mvs[name], family.every[name]
        found = assess(every, device, tiers, choice.wants)
        for label, plan, row in fixed_plans(mv, every):
            if row is not None and found.accurate[row]:
                out.append(
                    oracle.candidate(f"{short(name)} {label}", plan, found.costs, row, link, True)
                )
        best = choice.decision.plan
        row = every.locate(best)
        out.append(
            oracle.candidate(
                f"{short(name)} best", oracle.as_plan(mv, best), found.costs, row, link, False
            )
        )
    return out


def battery_choices(family: Family, device: DeviceState, tiers, floor: float) -> dict:
    """What the planner runs at full and at low battery, for a device asking for latency
    and for one asking for the fewest bytes."""
    out = {}
    for objective in ("latency", "bytes"):
        for level, charge in BATTERY.items():
            state = DeviceState(device.speed, device.link, device.preprocess_ms, battery=charge)
            choices, name = planned(
                family, state, tiers, Wants(accuracy=floor, objective=objective)
            )
            plan = choices[name].decision.plan
            quality = family.members[name].quality
            out[f"{objective}/{level}"] = {
                "member": name,
                "plan": words(name, plan),
                "objective": plan.objective,
                "energy_mj": plan.predicted.energy_mj,
                "latency_ms": plan.predicted.latency_ms,
                "agreement": quality.agreement,
                "accuracy": quality.accuracy,
            }
    return out


def run_point(cfg, family: Family, frames, up_bps, rtt, speed, args) -> dict:
    device = DeviceState(speed=speed, link=Link(up_bps, rtt), preprocess_ms=args.preprocess_ms)
    tiers = {"edge": TierState("edge", servers=1)}
    started = time.perf_counter()
    choices, chosen = planned(family, device, tiers, Wants(accuracy=args.floor))
    decide_ms = (time.perf_counter() - started) * 1000
    cands = candidates(family, choices, device, tiers)
    oracle.measure(cands, cfg, Link(up_bps, rtt), speed, frames, args.frames)
    top = oracle.oracle_of(cands)
    plan = next(c for c in cands if c.name == f"{short(chosen)} best")
    best = {}
    for name in choices:
        mine = [c for c in cands if c.plan.model == name and c.measured_ms is not None]
        best[name] = oracle.oracle_of(mine) if mine else None
    others = [c for n, c in best.items() if n != DEFAULT and c is not None]
    rival = oracle.oracle_of(others) if others else None
    default = best.get(DEFAULT)
    return {
        "uplink_bps": up_bps,
        "rtt_ms": rtt,
        "speed": speed,
        "floor": args.floor,
        "decide_ms": round(decide_ms, 2),
        "candidates_of": sorted(choices),
        "plan": {
            "member": chosen,
            "words": words(chosen, plan.plan),
            "predicted_ms": round(plan.predicted_ms, 2),
            "measured_ms": round(plan.measured_ms, 2),
        },
        "oracle": {
            "member": top.plan.model,
            "words": words(top.plan.model, top.plan),
            "measured_ms": round(top.measured_ms, 2),
        },
        "ratio": round(plan.measured_ms / top.measured_ms, 3),
        "error": round(abs(plan.predicted_ms - plan.measured_ms) / plan.measured_ms, 3),
        "members": {
            n: None
            if c is None
            else {"words": words(n, c.plan), "measured_ms": round(c.measured_ms, 2)}
            for n, c in best.items()
        },
        "member_win": (
            None
            if default is None or rival is None
            else {
                "member": rival.plan.model,
                "ratio": round(default.measured_ms / rival.measured_ms, 3),
            }
        ),
        "battery": battery_choices(family, device, tiers, args.floor),
        "fixed": oracle.fixed_ratios(cands, top),
        "candidates": [c.to_json() for c in cands],
    }


def cheaper_when_low(p: dict, objective: str) -> bool:
    full, low = p["battery"][f"{objective}/full"], p["battery"][f"{objective}/low"]
    return low["member"] != full["member"] and low["energy_mj"] < full["energy_mj"]


def summarise(points: list[dict]) -> dict:
    wins = [p["member_win"]["ratio"] for p in points if p["member_win"]]
    return {
        **oracle.accuracy_of(points),
        "chosen": {m: sum(p["plan"]["member"] == m for p in points) for m in _members(points)},
        "member_win_max": max(wins) if wins else None,
        "member_win_at_1.3": sum(w >= 1.3 for w in wins),
        "cheaper_when_low": {
            o: sum(cheaper_when_low(p, o) for p in points) for o in ("latency", "bytes")
        },
        "worst_ratio_by_fixed": oracle.worst_by_fixed(points),
    }


def _members(points: list[dict]) -> list[str]:
    return sorted({m for p in points for m in p["members"]})


def report(points: list[dict]) -> None:
    columns = ("uplink", "RTT", "speed", "plan", "pred ms", "meas ms", "oracle", "oracle ms")
    rows = []
    for p in points:
        win = p["member_win"]
        default = p["members"].get(DEFAULT)
        rows.append(
            [
                *oracle.point_cells(p),
                p["plan"]["words"],
                f"{p['plan']['predicted_ms']:.1f}",
                f"{p['plan']['measured_ms']:.1f}",
                p["oracle"]["words"],
                f"{p['oracle']['measured_ms']:.1f}",
                f"{p['ratio']:.3f}",
                f"{p['error']:.1%}",
                "-" if default is None else f"{default['words']} {default['measured_ms']:.1f}",
                "-" if win is None else f"{short(win['member'])} {win['ratio']:.2f}",
            ]
        )
    extra = ("ratio", "error", "default's best (ms)", "best other member: win")
    floor = points[0].get("floor", FLOOR)
    oracle.print_table(
        f"{FAMILY}, floor {floor:.0%}: planner vs measured oracle", (*columns, *extra), rows
    )
    battery = []
    for p in points:
        for objective in ("latency", "bytes"):
            full, low = p["battery"][f"{objective}/full"], p["battery"][f"{objective}/low"]
            battery.append(
                [
                    *oracle.point_cells(p),
                    objective,
                    f"{full['plan']} {full['energy_mj']:.2f} mJ",
                    f"{low['plan']} {low['energy_mj']:.2f} mJ",
                    f"{low['agreement']:.1%} / {low['accuracy']:.1%}",
                    "yes" if cheaper_when_low(p, objective) else "no",
                ]
            )
    columns = ("uplink", "RTT", "speed", "asks for", "full battery", "low battery")
    tail = ("low's agreement / accuracy", "cheaper member")
    oracle.print_table(
        f"{FAMILY}: full vs low battery (predicted device energy)", (*columns, *tail), battery
    )
    print(json.dumps(summarise(points), indent=1))


def scratch_pool(source: Path, into: Path) -> ModelPool:
    """A copy of the family's members in ``into`` (the source pool is only read)."""
    for mv in ModelPool(source).family(FAMILY):
        shutil.copytree(mv.dir.parent, into / mv.name)
    return ModelPool(into)


def load(pool: ModelPool) -> Family:
    mvs = {mv.name: mv for mv in pool.family(FAMILY)}
    members = {}
    for name, mv in mvs.items():
        assert mv.manifest.quality is not None, f"{name}: run `splitmq family measure {FAMILY}`"
        members[name] = Member(Options.of(mv), mv.manifest.quality)
    return Family(mvs, members, {n: Options.of(mv, prune=False) for n, mv in mvs.items()})


def run(args) -> list[dict]:
    source = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    with tempfile.TemporaryDirectory(prefix="bench-families-") as scratch:
        pool = scratch_pool(source, Path(scratch))
        family = load(pool)
        images = fashion_mnist("test")[0]
        frames = list(images[FIRST_IMAGE : FIRST_IMAGE + 12])
        args.preprocess_ms = oracle.preprocess_ms(family.mvs[DEFAULT], frames)

        def point(cfg, up, rtt, speed):
            return run_point(cfg, family, frames, up, rtt, speed, args)

        def line(p):
            win = p["member_win"]
            wins = (
                "" if win is None else f", {short(win['member'])} over default {win['ratio']:.2f}x"
            )
            return f"{p['plan']['words']}: ratio {p['ratio']:.3f}, error {p['error']:.1%}{wins}"

        return oracle.sweep(
            Path(scratch), oracle.grid(args, QUICK, UPLINKS, RTTS, SPEEDS), point, line
        )


def main() -> None:
    ap = oracle.parser(__doc__)
    ap.add_argument("--floor", type=float, default=FLOOR, help="agreement floor (reference)")
    args = ap.parse_args()
    points = oracle.points_of(args, lambda: run(args), summarise)
    report(points)


if __name__ == "__main__":
    sys.exit(main())
