"""CLI commands about one model: inspect, split, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from splitmq.cli.output import human, out, print_json, progress_bar
from splitmq.cli.root import JsonOption, ModelArg, PoolOption, app, open_ref
from splitmq.cli.serving import ProvidersOption
from splitmq.shared.errors import UserError


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
    from splitmq.shared.model.split import check_exact, split

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
    check = check_exact(mv, parts)
    deviation, ok = check.max_abs_deviation, check.ok
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
        int | None, typer.Option(help="ONNX Runtime threads \\[env: SPLITMQ_THREADS].", min=1)
    ] = None,
    repeats: Annotated[int, typer.Option(help="Turns of timed runs per partition.", min=3)] = 8,
    providers: ProvidersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Measure segment latencies on this host and store the profile in the pool, one per
    (host, execution provider): an edge on a GPU profiles with --providers cuda."""
    from splitmq.shared.model.providers import resolve
    from splitmq.shared.offline.profiling import profile as measure

    cfg, mv = open_ref(model, pool)
    threads = threads or cfg.threads
    names = resolve(providers or cfg.providers)
    with progress_bar() as bar:
        task = bar.add_task(f"profiling {mv.name}", total=mv.last_cut)
        prof = measure(
            mv,
            threads=threads,
            repeats=repeats,
            progress=lambda done, total: bar.update(task, completed=done),
            providers=names,
        )
    mv.save_profile(prof)
    last = mv.last_cut
    rows: list[dict[str, Any]] = [
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
                "provider": prof.provider,
                "full_ms": prof.heads_ms[last],
                "overhead_ms": prof.overhead_ms,
                "cuts": rows,
            }
        )
        return
    table = Table(
        title=f"{mv.name} v{mv.version} on {prof.host.cpu} ({prof.provider}), "
        f"{threads} thread(s): full model {prof.heads_ms[last]:.2f} ms"
    )
    for col in ("cut", "tensor", "device 0→cut ms", "rest cut→end ms", "next segment ms"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for r in rows:
        seg = "" if r["segment_ms"] is None else f"{r['segment_ms']:.3f}"
        table.add_row(str(r["cut"]), r["name"], f"{r['head_ms']:.3f}", f"{r['tail_ms']:.3f}", seg)
    out.print(table)
