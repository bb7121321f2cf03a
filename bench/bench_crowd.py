"""Load awareness: a crowd of slow devices sharing one slow edge worker.

Ten devices on 100 Mbit/s links, 4 frames/s each (four at 1/20 of this
host's speed, six at half), and one edge worker with one inference thread
emulating a server at half this host's speed, no cloud: the `crowd`
scenario of `splitmq demo`.
Three runs, one after the other, of the same setup:

- **all-local**: every device runs the whole model itself;
- **all-offload**: every device runs the plan the planner chooses for one
  slow device alone (what a planner blind to load would give them);
- **mixed**: every device follows the live planner, which sees the load
  the others' plans put on the edge.

Reported: p50 and p95 end-to-end latency over the answers to frames sent
after the first ``WARMUP_S`` (the planner's first plans need link
estimates), answers by tier, failures. Target: the mixed p95 below both.

    .venv/bin/python bench/bench_crowd.py [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from splitmq.device.answers import Answer
from splitmq.lab.scenarios import MODEL, SETUPS, run_setup
from splitmq.planner import DeviceState, Link, Options, TierState, decide
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.settings import Settings

WARMUP_S = 8.0


def lone_plan(mv, setup):
    """What the planner gives one of these devices when it is alone on the edge."""
    role = setup.devices[0]
    link = Link(100e6, 5.0)
    edge = TierState("edge", servers=setup.edge_threads, speed=setup.edge_speed)
    decision = decide(Options.of(mv), DeviceState(speed=role.speed, link=link), {"edge": edge})
    return decision.plan


def measure(run) -> dict:
    late = [a for k, t, a in run.outcomes if t - run.t0 >= WARMUP_S]
    ok = [a for a in late if isinstance(a, Answer)]
    e2e = [a.e2e_ms for a in ok]
    tiers: dict[str, int] = {}
    for a in ok:
        tiers[a.tier] = tiers.get(a.tier, 0) + 1
    return {
        "frames": len(late),
        "answered": len(ok),
        "failed": len(late) - len(ok),
        "p50_ms": round(float(np.percentile(e2e, 50)), 1),
        "p95_ms": round(float(np.percentile(e2e, 95)), 1),
        "by_tier": tiers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = Path(os.environ.get("SPLITMQ_POOL") or Settings().pool)
    cfg = Settings(_env_file=None, pool=pool)
    mv = ModelPool(pool).get(MODEL)
    setup = SETUPS["crowd"]()
    lone = lone_plan(mv, setup)
    modes = {
        "all-local": make_plan(mv, mv.last_cut, "raw"),
        f"all-offload ({lone.codec} at cut {lone.cut})": lone,
        "mixed (planner)": None,
    }
    results = {}
    for name, plan in modes.items():
        run = run_setup(setup, cfg, seconds=args.seconds, pinned=plan)
        results[name] = measure(run)
        if plan is None:
            results[name]["plans"] = {d.id: d.plan.device_only for d in run.devices}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    table = Table(title="10 devices (4 at speed 0.05, 6 at 0.5; 4 fps) on one 1-thread edge")
    for col in ("mode", "frames", "answered", "failed", "p50 ms", "p95 ms", "by tier"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(
            name,
            str(r["frames"]),
            str(r["answered"]),
            str(r["failed"]),
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            ", ".join(f"{k} {v}" for k, v in r["by_tier"].items()),
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
