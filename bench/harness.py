"""What the benchmarks share: a worker in its own process, as deployed."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from splitmq.broker.launcher import Broker
from splitmq.lab.spawn import spawn
from splitmq.shared.settings import Settings


def bench_settings(broker: Broker, pool: Path) -> Settings:
    """Settings for a benchmark: its own broker, the pool, a topic prefix of its own."""
    return Settings(
        _env_file=None,
        broker=broker.address,
        pool=pool,
        topic_prefix=f"bench/{uuid.uuid4().hex[:8]}/splitmq/v1",
    )


def start_worker(
    cfg: Settings,
    threads: int,
    tier: str = "edge",
    worker_id: str = "bench-edge",
    extra: list[str] | None = None,
) -> subprocess.Popen:
    """`splitmq edge` (or cloud) in its own process, with ``extra`` flags; returns once
    it serves."""
    flags = ["--workers", str(threads), "--queue", "8", *(extra or [])]
    (proc,) = spawn(cfg, tier, [worker_id], flags)
    return proc
