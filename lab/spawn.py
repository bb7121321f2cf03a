"""Roles in processes of their own, as deployed: started, waited for, killed.

``spawn`` runs ``splitmq edge|cloud ...`` with the settings' broker, pool and
topic prefix in its environment and returns once the worker's retained
telemetry says it is online (its Last Will says when it is gone). The
scenarios kill and restart edges this way; the benchmarks measure workers
this way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterable

from splitmq.shared.errors import UserError
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient

#: How long a role may take to come online (it loads ONNX Runtime and the pool).
ONLINE_S = 60.0


def spawn(
    settings: Settings,
    tier: str,
    ids: list[str],
    args: Iterable[str] = (),
    *,
    quiet: bool = False,
) -> list[subprocess.Popen]:
    """`splitmq TIER --id ID ARGS` for each of ``ids``, each in its own process; returns
    once all of them serve (or kills them all and raises)."""
    env = {
        **os.environ,
        "SPLITMQ_BROKER": settings.broker,
        "SPLITMQ_POOL": str(settings.pool),
        "SPLITMQ_TOPIC_PREFIX": settings.topic_prefix,
    }
    out = subprocess.DEVNULL if quiet else None
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "splitmq", tier, "--id", worker_id, *args],
            env=env,
            stdout=out,
            stderr=out,
        )
        for worker_id in ids
    ]
    try:
        wait_online(settings, tier, ids)
    except BaseException:
        kill(procs)
        raise
    return procs


def kill(procs: list[subprocess.Popen]) -> None:
    """Kill each process at once (SIGKILL: its Last Will goes out) and reap it."""
    for proc in procs:
        proc.kill()
        proc.wait()


def wait_online(settings: Settings, role: str, ids: list[str], timeout: float = ONLINE_S) -> None:
    """Until every one of ``ids`` (of ``role``) says it is online in its telemetry."""
    online: set[str] = set()
    ready = threading.Event()

    def seen(msg: Message) -> None:
        if msg.payload and msg.json().get("status") == "online":
            online.add(msg.topic.rsplit("/", 1)[-1])
            if online >= set(ids):
                ready.set()

    with MqttClient(settings.connection(f"lab-watch-{role}-{ids[0]}")) as client:
        client.subscribe(settings.topics.role_filter(role), seen)
        if not ready.wait(timeout):
            raise UserError(f"{role} workers {ids} did not come online in {timeout:g} s")
