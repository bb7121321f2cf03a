"""``splitmq family``: the members of a model family and how good each one is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from splitmq.cli.output import out, print_json
from splitmq.cli.root import JsonOption, PoolOption, app, settings

family_app = typer.Typer(
    help="Model families: members the planner chooses from.", no_args_is_help=True
)
app.add_typer(family_app, name="family")

FamilyArg = Annotated[str, typer.Argument(help="A family name (`pool add --family NAME`).")]


@family_app.command("measure")
def family_measure(
    family: FamilyArg,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="A folder of your JPEG/PNG images [default: the real samples calibration uses]."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads.", min=1)] = 1,
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run every member unsplit on the same images: its accuracy where they are labelled,
    and its agreement with the reference member (the most accurate; without labels, the
    largest). The planner spends part of a device's accuracy floor on a member's own
    disagreement, so it plans for a family only once it is measured."""
    from splitmq.shared.model.pool import ModelPool
    from splitmq.shared.offline import family as measuring

    cfg = settings(pool=pool)
    members = measuring.members_of(ModelPool(cfg.pool), family)
    sample = measuring.real() if samples is None else measuring.folder(samples)
    with Console(stderr=True).status(f"running the {len(members)} members of {family} …"):
        quality = measuring.measure(members, sample, threads)
    measuring.save(members, quality)
    _show(family, {mv.name: mv for mv in members}, quality, as_json)


@family_app.command("show")
def family_show(family: FamilyArg, pool: PoolOption = None, as_json: JsonOption = False) -> None:
    """The members, their size and what `family measure` found."""
    from splitmq.shared.model.pool import ModelPool

    members = ModelPool(settings(pool=pool).pool).family(family)
    quality = {mv.name: mv.manifest.quality for mv in members}
    _show(family, {mv.name: mv for mv in members}, quality, as_json)


def _show(family: str, members: dict, quality: dict, as_json: bool) -> None:
    rows = [
        {
            "model": f"{name}@{mv.version}",
            "macs": mv.cuts[-1].macs_before,
            "bytes": mv.manifest.size,
            **(quality[name].model_dump() if quality.get(name) else {"reference": None}),
        }
        for name, mv in members.items()
    ]
    if as_json:
        print_json({"family": family, "members": rows})
        return
    table = Table(title=f"family {family}")
    for col in ("member", "MACs", "MB", "accuracy", "agreement", "reference", "samples"):
        table.add_column(col, justify="left" if col in ("member", "reference") else "right")
    for row in rows:
        measured = row["reference"] is not None
        table.add_row(
            row["model"],
            f"{row['macs'] / 1e6:,.1f}M",
            f"{row['bytes'] / 1e6:.1f}",
            f"{row['accuracy']:.2%}" if measured and row["accuracy"] is not None else "",
            f"{row['agreement']:.2%}" if measured else "not measured",
            row["reference"] or "",
            str(row["samples"]) if measured else "",
        )
    out.print(table)


@family_app.command("join")
def family_join(
    head: Annotated[str, typer.Argument(help="The member that runs up to the tensor.")],
    tail: Annotated[str, typer.Argument(help="The member that runs after it.")],
    at: Annotated[str, typer.Option(help="The tensor both graphs compute (a cut's name).")],
    name: Annotated[str, typer.Option(help="The new member's name.")],
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a mixed-precision member: HEAD's graph up to the tensor --at, TAIL's after it
    (an int8 head and a float tail: the device runs integer kernels and sends uint8, the
    server finishes in float). It takes TAIL's config and family; profile, calibrate and
    `family measure` it like any member, so its cost and agreement are measured."""
    import tempfile

    from splitmq.shared.errors import UserError
    from splitmq.shared.model.pool import ModelPool
    from splitmq.shared.offline.mixed import join

    models = ModelPool(settings(pool=pool).pool)
    hv, tv = models.get(head), models.get(tail)
    family = tv.manifest.family
    if family is None or hv.manifest.family != family:
        raise UserError(f"{head} and {tail} must be members of one family (`pool add --family`)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        path.write_bytes(join(hv.graph.model, tv.graph.model, at).SerializeToString())
        mv = models.add(
            path,
            name,
            preprocess=tv.manifest.preprocess,
            labels=tv.labels,
            source=f"{head}@{hv.version} to {at}, then {tail}@{tv.version}",
            output=tv.manifest.output,
            family=family,
        )
    if as_json:
        print_json(
            {"model": mv.name, "version": mv.version, "family": family, "cuts": len(mv.cuts)}
        )
        return
    out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in family {family}")
    then = f"splitmq profile {mv.name}; splitmq calibrate {mv.name}"
    out.print(f"next: {then}; splitmq family measure {family}")
