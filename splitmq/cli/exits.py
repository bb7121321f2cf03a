"""``splitmq exits MODEL``: what a multi-exit model's exits are worth on labelled data."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from splitmq.cli.output import out, print_json
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref
from splitmq.shared.errors import UserError


@app.command()
def exits(
    model: ModelArg,
    policy: Annotated[
        str | None, typer.Option(help="Show only this policy: max_softmax or entropy.")
    ] = None,
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each exit's temperature and calibration error, and per policy and threshold: how
    many samples each exit answers, how many of those are right, and the accuracy
    delivered (measured on a labelled test split when the model was built)."""
    _, mv = open_ref(model, pool)
    report = mv.manifest.exits
    if report is None:
        raise UserError(
            f"{mv.name}@{mv.version} has no exits measured on labelled data "
            "(only `splitmq models build fashion-mnist-ee` measures them so far)"
        )
    curves = [c for c in report.curves if policy in (None, c.policy)]
    if not curves:
        raise UserError(f"unknown policy {policy!r}: use max_softmax or entropy")
    if as_json:
        print_json(
            {
                "model": f"{mv.name}@{mv.version}",
                "data": report.data,
                "exits": [e.model_dump() for e in report.exits],
                "curves": [c.model_dump() for c in curves],
                "final_accuracy": report.final_accuracy,
            }
        )
        return
    table = Table("exit", "cut", "temperature", "ECE before", "ECE after", title=mv.name)
    for e in report.exits:
        table.add_row(
            e.name, str(e.cut), f"{e.temperature:.3f}", f"{e.ece_before:.4f}", f"{e.ece_after:.4f}"
        )
    out.print(table)
    out.print(
        f"final output: accuracy {report.final_accuracy:.2%}, ECE {report.final_ece:.4f} "
        f"({report.data}; temperatures fitted on {report.validation})"
    )
    for c in curves:
        t = Table(
            "threshold",
            *(f"exits at {e.name}" for e in report.exits),
            "their accuracy",
            "delivered accuracy",
            title=f"policy {c.policy} ({'≥' if c.policy == 'max_softmax' else '≤'} threshold)",
        )
        for i, threshold in enumerate(c.thresholds):
            exited = c.exited_accuracy[i]
            t.add_row(
                f"{threshold:g}",
                *(f"{r:.1%}" for r in c.exit_rate[i]),
                "-" if exited is None else f"{exited:.2%}",
                f"{c.accuracy[i]:.2%}",
            )
        out.print(t)
