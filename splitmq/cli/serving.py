"""Options the long-running roles share (edge, cloud, planner, device, recorder, dashboard).

Each is one ``Annotated`` type, defined once, so a flag reads the same everywhere.
"""

from __future__ import annotations

from typing import Annotated

import typer

ThreadsOption = Annotated[
    int, typer.Option("--workers", min=1, max=64, help="Inference threads of this worker.")
]
QueueOption = Annotated[
    int, typer.Option("--queue", min=0, max=1024, help="Requests held beyond the busy threads.")
]
ResultsOption = Annotated[
    str | None,
    typer.Option(
        "--results",
        help="Record every answer this worker gives in a results store: a SQLite file "
        "(PATH or sqlite:///PATH) or postgresql://user@host:5432/db, for `splitmq results` "
        "(default: the SPLITMQ_RESULTS setting; unset: none).",
        show_default=False,
    ),
]

MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve Prometheus metrics on this port, at /metrics (0: any free port, logged) "
        "\\[env: SPLITMQ_METRICS_PORT].",
        show_default=False,
    ),
]


MetricsHostOption = Annotated[
    str | None,
    typer.Option(
        "--metrics-host",
        help="Address the metrics server binds \\[default: 127.0.0.1; env: "
        "SPLITMQ_METRICS_HOST]; 0.0.0.0 where a container publishes the port.",
        show_default=False,
    ),
]
SiteOption = Annotated[
    str | None,
    typer.Option(
        help="The site it runs at (docs/operations.md, sites) \\[env: SPLITMQ_SITE]: a "
        "broker bridges it, an edge probes its WAN, the planner watches the bridge.",
        show_default=False,
    ),
]
ConnectTimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--connect-timeout",
        help="How long to wait for the broker at start, e.g. 30s or 2min, retrying with "
        "backoff \\[default: forever; env: SPLITMQ_CONNECT_TIMEOUT].",
        show_default=False,
    ),
]
ProvidersOption = Annotated[
    str | None,
    typer.Option(
        "--providers",
        help="ONNX Runtime execution providers in order, e.g. cuda,cpu \\[default: cpu; env: "
        "SPLITMQ_PROVIDERS]: a missing one is an error unless a later one is listed.",
        show_default=False,
    ),
]
MaxBatchOption = Annotated[
    int | None,
    typer.Option(
        "--max-batch",
        min=1,
        max=256,
        help="Run up to this many requests for one segment as one call \\[default: 1 on "
        "CPU, 8 on an accelerator; env: SPLITMQ_MAX_BATCH].",
        show_default=False,
    ),
]
MaxQueueDelayOption = Annotated[
    str | None,
    typer.Option(
        "--max-queue-delay",
        help="How long a short batch waits for more requests, e.g. 2ms \\[default: 0, run "
        "what is queued at once; env: SPLITMQ_MAX_QUEUE_DELAY].",
        show_default=False,
    ),
]
