"""The results store's schema: ordered migrations, and one answer as one row.

One DDL for both backends: ``{json}`` is the only word they spell differently
(SQLite keeps JSON as TEXT, PostgreSQL as JSONB). Migration N (1-based) moves
a store from schema version N-1 to N; a store records each version it applied
in ``schema_version``. Never edit a released migration: append the next one.

Columns a query filters on are columns (device, model, version, tier,
answered_at); the rest of an answer (top-k, a detector's boxes, a raw task's
output summaries, the route, the per-hop latency breakdown) is JSON. Times are
Unix seconds, each host's own clock.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from splitmq.shared.protocol.results import Result

#: The DDL of each schema version, in order.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE results (
            device TEXT NOT NULL,
            request_id TEXT NOT NULL,
            model TEXT NOT NULL,
            version INTEGER NOT NULL,
            tier TEXT NOT NULL,
            worker TEXT NOT NULL,
            exit TEXT NOT NULL,
            cut INTEGER,
            codec TEXT,
            route {json} NOT NULL,
            top {json} NOT NULL,
            latency {json} NOT NULL,
            bytes BIGINT NOT NULL,
            sent_at DOUBLE PRECISION NOT NULL,
            answered_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device, request_id)
        )""",
        "CREATE INDEX results_by_time ON results (answered_at)",
        "CREATE INDEX results_by_device ON results (device, answered_at)",
        "CREATE INDEX results_by_model ON results (model, version, answered_at)",
    ),
    # 2: detectors and raw tasks answer with boxes or tensors, not top-k; rows from
    # before read as answers with none.
    (
        "ALTER TABLE results ADD COLUMN boxes {json} NOT NULL DEFAULT '[]'",
        "ALTER TABLE results ADD COLUMN outputs {json} NOT NULL DEFAULT '[]'",
    ),
)

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)

#: A row's columns, in the order ``row`` gives them and queries return them.
COLUMNS = (
    "device",
    "request_id",
    "model",
    "version",
    "tier",
    "worker",
    "exit",
    "cut",
    "codec",
    "route",
    "top",
    "latency",
    "bytes",
    "sent_at",
    "answered_at",
    "boxes",
    "outputs",
)
JSON_COLUMNS = frozenset({"route", "top", "latency", "boxes", "outputs"})
#: What a row keeps of a raw output: its summary, not its values (``data``, base64),
#: which may be megabytes per answer.
RAW_SUMMARY = ("name", "shape", "dtype", "min", "max", "mean")


def row(result: Result) -> tuple[Any, ...]:
    """An answer as the values of ``COLUMNS``: all from the result document, whichever
    tier published it (a device's own answers have no codec and an empty route)."""
    return (
        result.device,
        result.id,
        result.model,
        result.version,
        result.tier,
        result.latency[-1].id,
        str(result.exit),
        result.cut,
        result.codec,
        _json([asdict(hop) for hop in result.route]),
        _json([asdict(entry) for entry in result.top]),
        _json([asdict(hop) for hop in result.latency]),  # as the result document has them
        result.bytes,
        result.sent_at if result.sent_at is not None else result.t_sent,
        result.t_sent,
        _json([asdict(box) for box in result.boxes]),  # corners as [x0, y0, x1, y1]
        _json([{key: getattr(o, key) for key in RAW_SUMMARY} for o in result.outputs]),
    )


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
