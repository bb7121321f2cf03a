"""Feature-map fidelity: the Pareto frontier of bytes vs top-1 agreement for EfficientNet-Lite0.

Calibrates clip ranges on 100 photo crops, then measures every codec at the
candidate cuts on 200 held-out crops (``splitmq.shared.offline.calibration``), with
``jpeg:85`` of the same input as the reference line. Prints the frontier and
checks the issue's two claims: a (cut, codec) with >= 99% agreement sending
fewer bytes than ``jpeg:85``, and one with >= 10x fewer bytes than fp32 at
its cut with >= 97% agreement (exit status 1 if either fails). Writes the
plot as a PNG (docs/fidelity-efficientnet-lite0.png unless ``--plot``).

    .venv/bin/python bench/bench_fidelity.py [--cuts 0,13,...|all] [--compare-clips]

Default cuts: those ``splitmq calibrate`` picks (each smaller in fp32 than all
before it) plus every cut of the last two stages (41-55), whose tails are
cheap to run; ``--cuts all`` sweeps every cut, several times longer.
``--compare-clips`` also measures the calibrated codecs under every way of
picking their clip range (``splitmq.shared.offline.clipping.CLIPS``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from splitmq.shared.model.calibration import CALIBRATED, FidelityRow, params_for
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.calibration import calibrate, collect, default_cuts, parse_cuts
from splitmq.shared.offline.clipping import CLIPS, cut_ranges
from splitmq.shared.offline.fidelity import measure, pareto
from splitmq.shared.offline.samples import Samples, real_samples
from splitmq.shared.settings import Settings

REFERENCE = "jpeg:85"
PLOT = Path(__file__).parent.parent / "docs" / "fidelity-efficientnet-lite0.png"
LATE_STAGES_FROM = 41
console = Console(highlight=False)


def bench_cuts(mv: ModelVersion) -> list[int]:
    return sorted(set(default_cuts(mv)) | set(range(LATE_STAGES_FROM, mv.last_cut)))


def frontier_table(frontier: list[FidelityRow], reference: FidelityRow) -> Table:
    table = Table(title=f"Pareto frontier (bytes vs agreement); {REFERENCE} = reference")
    for col in ("cut", "codec", "bytes", f"× fewer than {REFERENCE}", "× fewer than fp32", "agree"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for row in frontier:
        table.add_row(
            str(row.cut),
            row.codec,
            f"{row.bytes:,.0f}",
            f"{reference.bytes / row.bytes:.1f}×",
            f"{row.ratio:.1f}×",
            f"{row.agreement:.1%}",
        )
    return table


def describe(row: FidelityRow) -> str:
    return (
        f"cut {row.cut} {row.codec}: {row.bytes:,.0f} B, {row.ratio:.1f}× fewer than fp32 "
        f"({row.ratio * row.bytes:,.0f} B), {row.agreement:.1%} top-1 agreement"
    )


def claims(rows: list[FidelityRow], reference: FidelityRow) -> bool:
    """Print both must-show claims with their best rows; True when both hold."""
    under_jpeg = [r for r in rows if r.agreement >= 0.99 and r.bytes < reference.bytes]
    tenfold = [r for r in rows if r.ratio >= 10 and r.agreement >= 0.97]
    console.print(
        f"\n{REFERENCE} of the same input: {reference.bytes:,.0f} B, "
        f"{reference.agreement:.1%} agreement"
    )
    for title, found in (
        (f"(a) >= 99% agreement, fewer bytes than {REFERENCE}", under_jpeg),
        ("(b) >= 10× fewer bytes than fp32, >= 97% agreement", tenfold),
    ):
        verdict = "[green]MET[/]" if found else "[red]NOT MET[/]"
        console.print(f"{title}: {verdict} by {len(found)} pair(s)")
        if found:
            for what, row in (
                ("fewest bytes", min(found, key=lambda r: r.bytes)),
                ("earliest cut", min(found, key=lambda r: (r.cut, r.bytes))),
                ("highest agreement", max(found, key=lambda r: (r.agreement, -r.bytes))),
            ):
                console.print(f"   {what}: {describe(row)}")
    return bool(under_jpeg and tenfold)


def per_cut_table(rows: list[FidelityRow]) -> Table:
    """What each cut needs to send: the fewest bytes at >= 99% and at >= 97% agreement."""
    table = Table(title="per cut: fewest bytes at a given agreement")
    for col in ("cut", "fp32 B", ">= 99%: codec", "B", ">= 97%: codec", "B"):
        table.add_column(col, justify="left" if "codec" in col else "right")
    for cut in sorted({r.cut for r in rows}):
        cells = [str(cut), f"{next(r.ratio * r.bytes for r in rows if r.cut == cut):,.0f}"]
        for floor in (0.99, 0.97):
            good = [r for r in rows if r.cut == cut and r.agreement >= floor]
            best = min(good, key=lambda r: r.bytes) if good else None
            cells += [best.codec, f"{best.bytes:,.0f}"] if best else ["-", "-"]
        table.add_row(*cells)
    return table


def plot(
    rows: list[FidelityRow], frontier: list[FidelityRow], reference: FidelityRow, path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    ax.scatter(
        [r.bytes for r in rows],
        [100 * r.agreement for r in rows],
        s=10,
        color="0.65",
        label="every (cut, codec)",
    )
    cuts = sorted({r.cut for r in rows})
    shown = [c for c in (0, 13, 27, 43, 48, 54, 55) if c in cuts]
    for i, cut in enumerate(shown):
        mine = pareto([r for r in rows if r.cut == cut])
        what = "input: u8, JPEG" if cut == 0 else f"fp32 {mine[0].ratio * mine[0].bytes:,.0f} B"
        ax.step(
            [r.bytes for r in mine],
            [100 * r.agreement for r in mine],
            where="post",
            marker="s" if cut == 0 else "o",
            ms=3.5,
            lw=1.1,
            color=plt.get_cmap("tab10")(i),
            label=f"cut {cut} ({what})",
        )
    ax.step(
        [r.bytes for r in frontier],
        [100 * r.agreement for r in frontier],
        where="post",
        color="crimson",
        lw=5,
        alpha=0.3,
        label="Pareto frontier, all cuts",
    )
    for r in frontier:
        ax.annotate(
            f"{r.cut}:{r.codec}",
            (r.bytes, 100 * r.agreement),
            textcoords="offset points",
            xytext=(3, -12),
            fontsize=7.5,
            color="crimson",
        )
    ax.axvline(reference.bytes, color="k", ls="--", lw=1.2, label=f"{REFERENCE} of the input")
    for level in (99, 97):
        ax.axhline(level, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    bottom = 60
    ax.set_ylim(bottom, 100.8)
    ax.set_xlabel("bytes per sample (codec data + params), log scale")
    ax.set_ylabel("top-1 agreement with the uncompressed model (%)")
    ax.set_title(
        f"EfficientNet-Lite0: {len(rows)} (cut, codec) pairs on {len(cuts)} cuts, "
        f"lines: per-cut frontiers (points under {bottom}% not shown)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    console.print(f"\nwrote {path}")


def compare_clips(mv: ModelVersion, cuts: list[int], calibration: Samples, evaluation: Samples):
    """Agreement of the calibrated codecs under each way of picking the clip range."""
    values = collect(mv, [c for c in cuts if c > 0], calibration)
    codecs = frozenset(CALIBRATED)
    table = Table(title="clip method: mean (min) top-1 agreement over the cuts")
    table.add_column("codec")
    results = {}
    for clip in CLIPS:
        ranges = {str(cut): cut_ranges(v, clip) for cut, v in values.items()}
        rows, _ = measure(
            mv, evaluation, list(values), lambda c, k, r=ranges: params_for(r, c, k), only=codecs
        )
        results[clip] = rows
        table.add_column(clip, justify="right")
    for codec in CALIBRATED:
        cells = []
        for clip in CLIPS:
            agree = [r.agreement for r in results[clip] if r.codec == codec]
            cells.append(f"{sum(agree) / len(agree):.1%} ({min(agree):.1%})")
        table.add_row(codec, *cells)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--cuts", help="e.g. 0,13,43 or 'all' (default: see module doc)")
    parser.add_argument("--samples", type=int, default=200, help="held-out samples")
    parser.add_argument("--calibration-samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to write the PNG")
    parser.add_argument("--compare-clips", action="store_true", help="also compare clip methods")
    args = parser.parse_args()
    pool = ModelPool(Path(os.environ.get("SPLITMQ_POOL") or Settings().pool))
    mv = pool.get(args.model)
    cuts = parse_cuts(mv, args.cuts) if args.cuts else bench_cuts(mv)
    calibration, evaluation = real_samples(mv, args.calibration_samples, args.samples)
    start = time.perf_counter()
    result = calibrate(mv, calibration, evaluation, cuts, threads=args.threads)
    elapsed = time.perf_counter() - start
    console.print(
        f"{mv.name} v{mv.version}: {len(result.rows)} (cut, codec) pairs at cuts {cuts}; "
        f"clip ranges ({result.clip}) from {len(calibration)} photo crops, measured on "
        f"{len(evaluation)} others in {elapsed:.0f} s ({args.threads} thread(s), "
        f"{platform.python_version()})"
    )
    reference = next(r for r in result.rows if r.cut == 0 and r.codec == REFERENCE)
    frontier = pareto(result.rows)
    console.print(frontier_table(frontier, reference))
    console.print(per_cut_table(result.rows))
    ok = claims(result.rows, reference)
    plot(result.rows, frontier, reference, args.plot)
    if args.compare_clips:
        compare_clips(mv, cuts, calibration, evaluation)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
