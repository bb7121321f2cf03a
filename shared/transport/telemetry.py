"""Publishing a role's retained telemetry document on ``telemetry/<role>/<id>``.

Every role publishes one when it starts and then every ``period_s``; the
MQTT Last Will (and a clean close) replaces it with ``{"status": "offline"}``.
The planner reads these retained documents, so a new planner sees every
role at once. The documents themselves are typed in ``protocol.telemetry``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from splitmq.shared.protocol.telemetry import OFFLINE, Telemetry
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.transport.mqtt import MqttClient, Will

log = logging.getLogger(__name__)

#: Builds the document to publish, given its timestamp.
Snapshot = Callable[[float], Telemetry]


class TelemetryPublisher:
    """A thread publishing ``snapshot(now)`` retained every ``period_s``."""

    def __init__(
        self,
        client: MqttClient,
        topics: Topics,
        role: str,
        role_id: str,
        snapshot: Snapshot,
        period_s: float = 5.0,
    ) -> None:
        self.client = client
        self.topic = topics.telemetry(role, role_id)
        self.snapshot = snapshot
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"telemetry-{role_id}", daemon=True)

    @staticmethod
    def will(topics: Topics, role: str, role_id: str) -> Will:
        return Will(topics.telemetry(role, role_id), OFFLINE.model_dump())

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def publish(self) -> None:
        try:
            payload = self.snapshot(time.time()).to_json()
            self.client.publish(self.topic, payload, qos=1, retain=True, json=True)
        except Exception:  # telemetry must never take a role down
            log.exception("cannot publish telemetry to %s", self.topic)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.publish()
