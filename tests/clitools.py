"""Running `splitmq` as users do, in a subprocess, from the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient


def cli_env(settings: Settings | None = None, pool: Path | None = None) -> dict[str, str]:
    """The environment of a `splitmq` process: the test's broker, topics and pool."""
    env = {**os.environ, "COLUMNS": "200"}
    if settings is not None:
        env |= {
            "SPLITMQ_BROKER": settings.broker,
            "SPLITMQ_POOL": str(settings.pool),
            "SPLITMQ_TOPIC_PREFIX": settings.topic_prefix,
        }
    if pool is not None:
        env["SPLITMQ_POOL"] = str(pool)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitmq", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitmq", *args], env=env, **kwargs)


def wait_online(settings: Settings, role: str, role_id: str, timeout: float = 60.0) -> None:
    """Block until a role's retained telemetry says online."""
    online = threading.Event()

    def seen(msg) -> None:
        if json.loads(msg.payload).get("status") == "online":
            online.set()

    with MqttClient(settings.connection(f"watch-{role_id}")) as client:
        client.subscribe(settings.topics.telemetry(role, role_id), seen)
        assert online.wait(timeout), f"{role} {role_id} never came online"
