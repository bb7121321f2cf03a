"""`splitmq calibrate`: clip ranges per cut and the fidelity of every codec, into the manifest."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from splitmq.cli.output import human, out, phases, print_json, progress_bar
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref
from splitmq.shared.offline.calibration import Calibration, parse_cuts, save
from splitmq.shared.offline.calibration import calibrate as run_calibration
from splitmq.shared.offline.clipping import CLIPS, check_clip
from splitmq.shared.offline.samples import default_counts, real_samples


@app.command()
def calibrate(
    model: ModelArg,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            min=10,
            help="Held-out samples to measure on [default: 200 photos, 2000 MNIST digits].",
            show_default=False,
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None,
        typer.Option(
            "--calibration-samples",
            min=10,
            help="Samples to pick clip ranges on [default: 100 photos, 1000 MNIST digits].",
            show_default=False,
        ),
    ] = None,
    cuts: Annotated[
        str | None,
        typer.Option(
            "--cuts",
            help="Cuts to calibrate, e.g. 3,14,21, or 'all' [default: every cut a plan may "
            "use: all but the output and the cuts that only pad the one before].",
            show_default=False,
        ),
    ] = None,
    clip: Annotated[
        str,
        typer.Option(
            help=f"How clip ranges are picked: {', '.join(CLIPS)}. auto: per (cut, codec) the "
            "better of the least-squared-error static range (mse) and each message's own "
            "min/max (none).",
        ),
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads [env: SPLITMQ_THREADS].", min=1)
    ] = None,
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pick clip ranges on real samples, measure every (cut, codec) on held-out ones, save both."""
    check_clip(clip)
    cfg, mv = open_ref(model, pool)
    chosen = None if cuts is None else parse_cuts(mv, cuts)
    default_calibration, default_evaluation = default_counts(mv)
    calibration, evaluation = real_samples(
        mv, calibration_samples or default_calibration, samples or default_evaluation
    )
    with progress_bar() as bar:
        result = run_calibration(
            mv, calibration, evaluation, chosen, clip, threads or cfg.threads, phases(bar, mv.name)
        )
    save(mv, result)
    if as_json:
        print_json(
            {
                "model": mv.name,
                "version": mv.version,
                "clip": result.clip,
                "samples": result.samples.model_dump(),
                "accuracy": result.accuracy,
                "rows": [row.to_json() for row in result.rows],
            }
        )
        return
    out.print(_table(mv.name, mv.version, result))
    if result.accuracy is not None:
        out.print(f"uncompressed model: {result.accuracy:.2%} top-1 accuracy on the same samples")
    out.print(
        f"saved clip ranges for {len(result.ranges)} cut(s) and {len(result.rows)} fidelity "
        f"rows to {mv.dir / 'manifest.json'}"
    )


def _table(name: str, version: int, result: Calibration) -> Table:
    labelled = result.accuracy is not None
    table = Table(
        title=f"{name} v{version}: {result.samples.evaluation} held-out samples "
        f"({result.samples.evaluation_data}), clip ranges from "
        f"{result.samples.calibration} others ({result.clip})"
    )
    columns = ["cut", "codec", "bytes", "ratio", "agreement", *(["accuracy"] if labelled else [])]
    for col in columns:
        table.add_column(col, justify="left" if col == "codec" else "right")
    previous = None
    for row in result.rows:
        cells = [
            "" if row.cut == previous else str(row.cut),
            row.codec,
            human(row.bytes),
            f"{row.ratio:.1f}×",
            f"{row.agreement:.1%}",
        ]
        if labelled and row.accuracy is not None:
            cells.append(f"{row.accuracy:.1%}")
        table.add_row(*cells)
        previous = row.cut
    return table
