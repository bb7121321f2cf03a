"""How well profiles predict the latency of any partition (issue: error <= 15%).

Profiles a model, then measures, in a separate pass, every head and tail
and a uniform sample of all partitions a -> b (0 <= a < b <= last cut), in
round-robin turns so machine noise hits all of them alike, and compares
each measurement with ``Profile.predict_ms``. The sample is reported split
by length: partitions of a few segments take tens of microseconds and are
the hardest to predict.

    .venv/bin/python bench/bench_profile_accuracy.py [MODEL] [--pairs 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.profiling import Runner, cut_values, profile, round_robin_ms
from splitmq.shared.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="efficientnet-lite0")
    ap.add_argument("--pairs", type=int, default=100, help="partitions in the uniform sample")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = ModelPool(Path(os.environ.get("SPLITMQ_POOL") or Settings().pool))
    mv = pool.get(args.model)
    last = mv.last_cut
    start = time.perf_counter()
    prof = profile(mv, repeats=args.repeats)
    profile_s = time.perf_counter() - start

    rng = random.Random(1)
    every_partition = [(a, b) for a in range(last) for b in range(a + 1, last + 1)]
    sample = rng.sample(every_partition, min(args.pairs, len(every_partition)))
    kinds = {
        "head 0→b (all)": [(0, b) for b in range(1, last + 1)],
        "tail a→end (all)": [(a, last) for a in range(1, last)],
        "any a→b (uniform sample)": sample,
        "  of which ≤ 4 segments": [(a, b) for a, b in sample if b - a <= 4],
        "  of which > 4 segments": [(a, b) for a, b in sample if b - a > 4],
    }
    values = cut_values(mv, mv.graph.sample_input())
    measured: dict[tuple[int, int], float] = {}
    todo = sorted({p for pairs in kinds.values() for p in pairs})
    rng.shuffle(todo)  # chunks mix long and short partitions alike
    for chunk in range(0, len(todo), 20):  # bounded memory: 20 sessions at a time
        part = todo[chunk : chunk + 20]
        runs = [Runner(mv, a, b, values[a], 1) for a, b in part]
        measured.update(zip(part, round_robin_ms(runs, args.repeats)))
    error = {p: abs(prof.predict_ms(*p) - ms) / ms for p, ms in measured.items()}
    rows = []
    for kind, pairs in kinds.items():
        errors = sorted(error[p] for p in pairs)
        rows.append(
            {
                "kind": kind.strip(),
                "partitions": len(errors),
                "mape": statistics.mean(errors),
                "p90": errors[int(0.9 * len(errors))],
            }
        )
    every = list(error.values())
    summary = {
        "model": mv.name,
        "cuts": len(mv.cuts),
        "full_ms": prof.heads_ms[last],
        "profile_s": round(profile_s, 1),
        "partitions": len(every),
        "mape": statistics.mean(every),
        "target": 0.15,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    table = Table(
        title=f"{mv.name}: predicted vs measured partition latency "
        f"(full model {prof.heads_ms[last]:.2f} ms, profile took {profile_s:.0f} s)"
    )
    for col in ("partitions", "count", "MAPE", "p90 error"):
        table.add_column(col, justify="right" if col != "partitions" else "left")
    for r in rows:
        table.add_row(r["kind"], str(r["partitions"]), f"{r['mape']:.1%}", f"{r['p90']:.1%}")
    table.add_row("all", str(len(every)), f"{summary['mape']:.1%}", "")
    Console().print(table)
    verdict = "OK" if summary["mape"] <= 0.15 else "ABOVE TARGET"
    Console().print(
        f"MAPE {summary['mape']:.1%} vs target 15%: {verdict} (ratio {summary['mape'] / 0.15:.2f})"
    )


if __name__ == "__main__":
    main()
