"""What the benchmarks share: a worker in its own process, as deployed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from splitmq.broker.launcher import Broker
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient


def bench_settings(broker: Broker, pool: Path) -> Settings:
    """Settings for a benchmark: its own broker, the pool, a topic prefix of its own."""
    return Settings(
        _env_file=None,
        broker=broker.address,
        pool=pool,
        topic_prefix=f"bench/{uuid.uuid4().hex[:8]}/splitmq/v1",
    )


def start_worker(
    cfg: Settings, threads: int, tier: str = "edge", worker_id: str = "bench-edge"
) -> subprocess.Popen:
    """`splitmq edge` (or cloud) in its own process; returns once it serves."""
    env = {
        **os.environ,
        "SPLITMQ_BROKER": cfg.broker,
        "SPLITMQ_POOL": str(cfg.pool),
        "SPLITMQ_TOPIC_PREFIX": cfg.topic_prefix,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "splitmq",
            tier,
            "--id",
            worker_id,
            "--workers",
            str(threads),
            "--queue",
            "8",
        ],
        env=env,
    )
    online = threading.Event()
    topic = cfg.topics.telemetry(tier, worker_id)
    with MqttClient(cfg, f"{worker_id}-watch") as watch:
        watch.subscribe(topic, lambda m: m.json().get("status") == "online" and online.set())
        if not online.wait(60):
            proc.kill()
            raise RuntimeError(f"the {tier} worker did not come online")
    return proc
