"""`splitmq calibrate`: clip ranges per cut and the fidelity of every codec, into the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from splitmq.cli.output import err, human, out, phases, print_json, progress_bar
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref
from splitmq.shared.errors import UserError
from splitmq.shared.offline.calibration import Calibration, parse_cuts, save
from splitmq.shared.offline.calibration import calibrate as run_calibration
from splitmq.shared.offline.clipping import CLIPS, check_clip
from splitmq.shared.offline.samples import (
    MIN_FOLDER_IMAGES,
    default_counts,
    folder_samples,
    real_samples,
)


@app.command()
def calibrate(
    model: ModelArg,
    samples: Annotated[
        str | None,
        typer.Option(
            "--samples",
            metavar="N|DIR",
            help="Held-out samples to measure on (default: 200 photos, 2000 MNIST digits), "
            f"or a folder of your own JPEG/PNG images (at least {MIN_FOLDER_IMAGES}, "
            "unlabelled, with the model's preprocessing): a third fit the clip ranges, the "
            "rest are held out to measure agreement with the unsplit model. Other files "
            "there are skipped with a warning.",
            show_default=False,
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None,
        typer.Option(
            "--calibration-samples",
            min=10,
            help="Samples to pick clip ranges on \\[default: 100 photos, 1000 MNIST digits].",
            show_default=False,
        ),
    ] = None,
    cuts: Annotated[
        str | None,
        typer.Option(
            "--cuts",
            help="Cuts to calibrate, e.g. 3,14,21, or 'all' \\[default: every cut a plan may "
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
        int | None, typer.Option(help="ONNX Runtime threads \\[env: SPLITMQ_THREADS].", min=1)
    ] = None,
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pick clip ranges on real samples (built-in, or your images with --samples DIR),
    measure every (cut, codec) on held-out ones, save both."""
    check_clip(clip)
    cfg, mv = open_ref(model, pool)
    chosen = None if cuts is None else parse_cuts(mv, cuts)
    count, folder = _count_or_folder(samples)
    default_calibration, default_evaluation = default_counts(mv)
    found = None
    if folder is not None:
        if calibration_samples is not None:
            raise UserError(
                "--calibration-samples counts built-in samples: with --samples DIR a third "
                "of the folder's images fit the clip ranges"
            )
        found = folder_samples(mv, folder, most=default_calibration + default_evaluation)
        for why in found.skipped:
            err.print(
                f"[yellow]warning:[/] {escape(why)}: skipped", highlight=False, soft_wrap=True
            )
        calibration, evaluation = found.calibration, found.evaluation
    else:
        calibration, evaluation = real_samples(
            mv, calibration_samples or default_calibration, count or default_evaluation
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
                "held_out": result.samples.evaluation,
                "folder": None
                if found is None
                else {"path": str(folder), "files": found.found, "skipped": found.skipped},
                "accuracy": result.accuracy,
                "rows": [row.to_json() for row in result.rows],
            }
        )
        return
    out.print(_table(mv.name, mv.version, result))
    if found is not None:
        out.print(
            f"{len(calibration) + len(evaluation)} images from {folder}: "
            f"{len(calibration)} fit the clip ranges, {len(evaluation)} held out measured "
            "agreement with the unsplit model (no labels: no accuracy)",
            markup=False,
            highlight=False,
        )
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


def _count_or_folder(text: str | None) -> tuple[int | None, Path | None]:
    """``--samples``: a count of built-in samples (at least 10), or a folder of images."""
    if text is None:
        return None, None
    if text.strip().lstrip("+-").isdigit() and not Path(text).is_dir():
        count = int(text)
        if count < 10:
            raise UserError(f"--samples: measure on at least 10 held-out samples, not {count}")
        return count, None
    return None, Path(text).expanduser()
