"""Retained presence and health documents on ``telemetry/<role>/<id>``.

Every role publishes one when it starts and then every ``period_s``; the
MQTT Last Will (and a clean close) replaces it with ``{"status": "offline"}``.
The planner reads these retained documents, so a new planner sees every
role at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from splitmq.shared.protocol.topics import Topics
from splitmq.shared.transport.mqtt import MqttClient, Will

log = logging.getLogger(__name__)


class Telemetry:
    """A thread publishing ``{"role", "id", "status", "ts", **fields()}`` retained."""

    def __init__(
        self,
        client: MqttClient,
        topics: Topics,
        role: str,
        role_id: str,
        fields: Callable[[], dict],
        period_s: float = 5.0,
    ) -> None:
        self.client, self.role, self.id = client, role, role_id
        self.topic = topics.telemetry(role, role_id)
        self.fields = fields
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"telemetry-{role_id}", daemon=True)

    @staticmethod
    def will(topics: Topics, role: str, role_id: str) -> Will:
        return Will(topics.telemetry(role, role_id))

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def publish(self) -> None:
        doc = {
            "role": self.role,
            "id": self.id,
            "status": "online",
            "ts": time.time(),
            **self.fields(),
        }
        try:
            self.client.publish_json(self.topic, doc, qos=1, retain=True)
        except Exception:  # telemetry must never take a role down
            log.exception("cannot publish telemetry to %s", self.topic)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.publish()
