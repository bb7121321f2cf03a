"""`splitmq results`: the answers the workers recorded, newest first (docs/results.md)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from splitmq.cli.output import out, print_json
from splitmq.cli.root import JsonOption, app, settings
from splitmq.shared.errors import UserError

#: Where `splitmq demo` records when no store is set, and where `splitmq results` then looks.
DEMO_STORE = "splitmq-results.db"

ResultsOption = Annotated[
    str | None,
    typer.Option(
        "--results",
        help="The results store: a SQLite file (PATH or sqlite:///PATH) or "
        f"postgresql://user@host:5432/db (default: the SPLITMQ_RESULTS setting, else "
        f"./{DEMO_STORE}, where `splitmq demo` records, if it is there).",
        show_default=False,
    ),
]


@app.command()
def results(
    device: Annotated[str | None, typer.Option(help="Only this device's answers.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only this model: NAME or NAME@VERSION.")
    ] = None,
    tier: Annotated[
        str | None, typer.Option(help="Only the answers of this tier: edge or cloud.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only answers from the last while, e.g. 90s or 10min.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many.")] = 50,
    store: ResultsOption = None,
    as_json: JsonOption = False,
) -> None:
    """The answers edge and cloud workers recorded (`--results`), newest first."""
    from splitmq.cloud.results import ResultsStore
    from splitmq.shared.model.pool import parse_ref
    from splitmq.shared.protocol.ids import TIERS
    from splitmq.shared.units import parse_ms

    if tier is not None and tier not in TIERS:
        raise UserError(f"--tier must be {' or '.join(TIERS)}, got {tier!r}")
    name, version = parse_ref(model) if model else (None, None)
    after = time.time() - parse_ms(since, "--since") / 1000 if since else None
    with ResultsStore(_where(store), create=False) as db:
        rows = db.query(
            device=device, model=name, version=version, tier=tier, since=after, limit=limit
        )
    if as_json:
        print_json({"store": str(db.url), "results": rows})
        return
    if not rows:
        out.print(f"no answers in the results store {db.url} match")
        return
    out.print(_table(rows, f"results store {db.url}: the newest {len(rows)}"))


def _where(store: str | None) -> str:
    """The store the flag or setting names, else the demo's here, else a one-line error."""
    from pathlib import Path

    chosen = settings(results=store).results
    if chosen:
        return chosen
    if Path(DEMO_STORE).is_file():
        return DEMO_STORE
    raise UserError(
        "no results store: set SPLITMQ_RESULTS or --results to the store the workers "
        f"record in (a SQLite file or postgresql://…), or run `splitmq demo` here (./{DEMO_STORE})"
    )


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("answered", "device", "model", "tier", "plan", "top-1", "score", "ms", "bytes"):
        table.add_column(col, justify="right" if col in ("score", "ms", "bytes") else "left")
    for r in rows:
        best = r["top"][0] if r["top"] else None
        table.add_row(
            datetime.fromtimestamp(r["answered_at"]).strftime("%Y-%m-%d %H:%M:%S"),
            r["device"],
            f"{r['model']}@{r['version']}",
            f"{r['tier']} ({r['worker']})",
            _plan(r),
            (best["label"] or str(best["index"])) if best else "",
            f"{best['score']:.3f}" if best else "",
            f"{_answer_ms(r['latency']):.1f}",
            str(r["bytes"]),
        )
    return table


def _plan(r: dict[str, Any]) -> str:
    """Cut, codec and route, as `splitmq demo` words a plan; the cut is unknown past a forward."""
    start = f"cut {r['cut']} {r['codec']}" if r["cut"] is not None else "cut ?"
    return f"{start} -> {'/'.join(hop['tier'] for hop in r['route'])}"


def _answer_ms(latency: list[dict[str, Any]]) -> float:
    """From the device starting its head to the answer leaving the worker: every hop's time."""
    keys = ("transfer_ms", "queue_ms", "compute_ms", "encode_ms")
    return sum(hop[k] or 0.0 for hop in latency for k in keys)
