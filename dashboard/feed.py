"""What the dashboard hears: retained telemetry and plans, results and errors, validated.

One MQTT client (as the ``monitor`` user on a secure broker: it only reads)
subscribes to ``telemetry/+/+``, ``plan/+/+``, ``result/+`` and ``error/+``.
Each message is parsed into its typed document and checked against its topic
(a document must name the role, id, device or model its topic names); telemetry
and plans are read by ``protocol.reading``, as the planner reads them. One that
fails is logged, counted and skipped, so a bad publisher can never take the
dashboard down or put a lie on the page; a cleared retained topic removes what it
held. Handlers run on paho's thread and only update the in-memory state.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from splitmq.dashboard.state import LiveState
from splitmq.shared.errors import SplitMQError, WireError
from splitmq.shared.protocol.reading import Rejected, read_plan, read_telemetry
from splitmq.shared.protocol.results import unpack_error, unpack_result
from splitmq.shared.protocol.topics import ANY
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient

log = logging.getLogger(__name__)


class Feed:
    """The dashboard's MQTT subscriber; ``start()`` connects, ``close()`` disconnects."""

    def __init__(self, settings: Settings, state: LiveState, client_id: str | None = None):
        self.settings, self.state = settings, state
        self.topics = settings.topics
        self.client = MqttClient(
            settings.connection(client_id or f"dashboard-{uuid.uuid4().hex[:8]}")
        )

    def start(self) -> Feed:
        self.client.connect()
        wild = self.topics.filters()
        routes: dict[str, Callable[[Message], None]] = {
            self.topics.telemetry_filter(): self._telemetry,
            self.topics.plans_all(): self._plan,
            wild.result(ANY): self._result,
            wild.error(ANY): self._error,
        }
        for topic_filter, handler in routes.items():
            self.client.subscribe(topic_filter, self._checked(handler), qos=1)
        return self

    def close(self) -> None:
        self.client.close()

    @property
    def connected(self) -> bool:
        return self.client.connected

    def _checked(self, handler: Callable[[Message], None]) -> Callable[[Message], None]:
        kind = handler.__name__.strip("_")

        def handle(msg: Message) -> None:
            try:
                handler(msg)
            except SplitMQError as exc:
                self._reject(kind, msg.topic, str(exc))

        return handle

    def _reject(self, kind: str, topic: str, why: str) -> None:
        log.warning("skipping a bad %s message on %s: %s", kind, topic, why)
        self.state.reject(kind, topic, why)

    def _telemetry(self, msg: Message) -> None:
        heard = read_telemetry(self.topics, msg.topic, msg.payload)
        if isinstance(heard, Rejected):
            self._reject("telemetry", msg.topic, heard.why)
        else:
            self.state.telemetry(*heard.key, heard.doc, time.time())

    def _plan(self, msg: Message) -> None:
        heard = read_plan(self.topics, msg.topic, msg.payload)
        if isinstance(heard, Rejected):
            self._reject("plan", msg.topic, heard.why)
        else:
            self.state.plan(*heard.key, heard.doc, time.time())

    def _result(self, msg: Message) -> None:
        result = unpack_result(msg.payload, self.settings.max_payload_bytes)
        if msg.topic != self.topics.result(result.device):
            raise WireError(f"the result is for device {result.device!r}")
        self.state.result(result, time.time())

    def _error(self, msg: Message) -> None:
        report = unpack_error(msg.payload, self.settings.max_payload_bytes)
        if msg.topic != self.topics.error(report.device):
            raise WireError(f"the error is for device {report.device!r}")
        self.state.error(report, time.time())
