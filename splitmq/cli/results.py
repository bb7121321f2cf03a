"""`splitmq results`: the answers the workers recorded, newest first (docs/results.md)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from splitmq.cli.output import out, print_json
from splitmq.cli.root import BrokerOption, JsonOption, PrefixOption, app, settings
from splitmq.cli.serving import ConnectTimeoutOption, MetricsHostOption, MetricsPortOption
from splitmq.shared.errors import UserError

log = logging.getLogger(__name__)

#: Where `splitmq demo` records when no store is set, and where `splitmq results` then looks.
DEMO_STORE = "splitmq-results.db"
#: A detector's boxes named in the table's answer column, best first (the rest counted).
SHOWN_BOXES = 3

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
        str | None, typer.Option(help="Only the answers of this tier: device, edge or cloud.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only answers from the last while, e.g. 90s or 10min.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many.")] = 50,
    store: ResultsOption = None,
    as_json: JsonOption = False,
) -> None:
    """The answers recorded (`splitmq recorder`, or workers' `--results`), newest first."""
    from splitmq.cloud.results import ResultsStore
    from splitmq.shared.model.pool import parse_ref
    from splitmq.shared.protocol.ids import TIERS
    from splitmq.shared.units import parse_ms

    if tier is not None and tier not in ("device", *TIERS):
        raise UserError(f"--tier must be device, {' or '.join(TIERS)}, got {tier!r}")
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


@app.command()
def recorder(
    store: ResultsOption = None,
    recorder_id: Annotated[
        str, typer.Option("--id", help="Client id: its durable session keeps what it missed.")
    ] = "recorder",
    keep: Annotated[
        str | None,
        typer.Option(help="Delete answers older than this, e.g. 7d or 12h (checked every 10 min)."),
    ] = None,
    broker: BrokerOption = None,
    topic_prefix: PrefixOption = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    connect_timeout: ConnectTimeoutOption = None,
) -> None:
    """Record every answer published on `result/+`, whichever tier gave it (devices
    answering themselves included), in the results store, until SIGINT or SIGTERM. On a
    secure broker, run it as the monitor user: it only reads."""
    from splitmq.cli.serve import metrics_served, wait_for_signal
    from splitmq.cloud.results import ResultsListener
    from splitmq.shared.metrics import Health
    from splitmq.shared.units import parse_ms

    cfg = settings(
        broker=broker,
        topic_prefix=topic_prefix,
        results=store,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        connect_timeout=connect_timeout,
    )
    if not cfg.results:
        raise UserError("splitmq recorder needs a store: --results or SPLITMQ_RESULTS")
    keep_s = parse_ms(keep, "--keep") / 1000 if keep else None
    if keep_s is not None and keep_s <= 0:
        raise UserError(f"--keep must be more than 0, got {keep!r}")
    listener = ResultsListener(cfg, cfg.results, recorder_id, keep_s, cfg.connect_timeout_s)
    health = Health("recorder", recorder_id, lambda: listener.client.connected)
    with (  # /healthz says 503 while the broker is awaited
        metrics_served(
            recorder_id, listener.metrics.registry, cfg.metrics_port, cfg.metrics_host, health
        ),
        listener,
    ):
        log.info("recording the answers on %s into %s", cfg.where, listener.recorder.store.url)
        wait_for_signal()
    counts = listener.counts()
    log.info("recorded %d answers (%d failed, %d dropped, %d rejected)", *counts.values())


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


#: The table's columns and the least width each text may be squeezed to (numbers never
#: are): a cell wraps, at spaces where it can, rather than end in "…", so each column
#: stays legible in 80 columns.
COLUMNS = (
    ("answered", 10),
    ("device", 8),
    ("model", 6),
    ("by", 6),
    ("plan", 8),
    ("answer", 12),
    ("ms", None),
    ("bytes", None),
)


def _table(rows: list[dict[str, Any]], title: str, room: int | None = None) -> Table:
    """The rows in ``room`` characters (the console's width): cells as plain text."""
    cells = [
        (
            datetime.fromtimestamp(r["answered_at"]).strftime("%Y-%m-%d %H:%M:%S"),
            r["device"],
            f"{r['model']}@{r['version']}",
            f"{r['worker']} ({r['tier']})",
            _plan(r),
            answer_text(r),
            f"{_answer_ms(r['latency']):.1f}",
            str(r["bytes"]),
        )
        for r in rows
    ]
    natural = [
        max(len(name), *(len(row[i]) for row in cells)) for i, (name, _) in enumerate(COLUMNS)
    ]
    least = [n if fewest is None else fewest for n, (_, fewest) in zip(natural, COLUMNS)]
    spacing = 2 * len(COLUMNS) - 1  # a padding space after each cell, a rule between
    widths = fit(natural, least, (room or out.width) - spacing)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    for (name, _), width in zip(COLUMNS, widths):
        number = name in ("ms", "bytes")
        table.add_column(name, justify="right" if number else "left", width=width, overflow="fold")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # text, never markup
    return table


def fit(natural: list[int], least: list[int], room: int) -> list[int]:
    """Column widths within ``room``: the widest column gives a character at a time,
    down to its least width, until the table fits (or none can give more)."""
    widths = list(natural)
    while sum(widths) > room:
        shrinkable = [i for i, w in enumerate(widths) if w > least[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def answer_text(r: dict[str, Any]) -> str:
    """The answer in a few words, whatever the task: the top-1 class and its score, a
    detector's boxes (best first), or a raw task's outputs (names and shapes)."""
    if r["top"]:
        best = r["top"][0]
        return f"{_label(best)} {best['score']:.3f}"
    if r["outputs"]:
        return ", ".join(
            f"{o['name']} {'x'.join(map(str, o['shape'])) or 'scalar'} {o['dtype']}"
            for o in r["outputs"]
        )
    boxes = r["boxes"]
    words = f"{len(boxes)} box{'' if len(boxes) == 1 else 'es'}"
    if boxes:
        words += ": " + ", ".join(f"{_label(b)} {b['score']:.2f}" for b in boxes[:SHOWN_BOXES])
    if len(boxes) > SHOWN_BOXES:
        words += f", +{len(boxes) - SHOWN_BOXES} more"
    return words


def _label(entry: dict[str, Any]) -> str:
    return entry["label"] if entry["label"] is not None else str(entry["index"])


def _plan(r: dict[str, Any]) -> str:
    """Cut, codec and route, as `splitmq demo` words a plan (rows from before results
    carried the device's cut lack it past a forward)."""
    if r["tier"] == "device":
        return "device-only"
    start = f"cut {r['cut']} {r['codec']}" if r["cut"] is not None else "cut ?"
    return f"{start} -> {'/'.join(hop['tier'] for hop in r['route'])}"


def _answer_ms(latency: list[dict[str, Any]]) -> float:
    """From the device starting its head to the answer leaving the worker: every hop's time."""
    keys = ("transfer_ms", "queue_ms", "compute_ms", "encode_ms")
    return sum(hop[k] or 0.0 for hop in latency for k in keys)
