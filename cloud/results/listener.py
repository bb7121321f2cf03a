"""One recorder for every tier: the answers published on ``result/+``, into the store.

Whichever tier answered (the device itself, the edge, the cloud), the result is on
``result/<device>``, so the store records what MQTT subscribers saw, from one
process. It subscribes as a reader (the ``monitor`` user on a secure broker), checks
each document against its topic, and queues it for the store (``Recorder``: never
blocking paho's thread). A bad document is logged and counted, never recorded; so is
one answered more than ``MAX_AHEAD_S`` in the future, which retention would never
delete. A device may publish results for itself only, but what it says of them (its
tier, its worker, its times) is its own word.
Its session is durable (``SESSION_EXPIRY_S``, a fixed client id), so the broker
keeps the results published while the recorder restarts, up to its queue limits.
``keep_s`` is the store's retention, which the recorder enforces.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from splitmq.cloud.results.recorder import Recorder
from splitmq.cloud.results.url import StoreUrl
from splitmq.shared.errors import WireError
from splitmq.shared.metrics import RoleMetrics, counter_family
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.topics import ANY
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import Message, MqttClient

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600  # results wait this long in the broker for a recorder away
MAX_AHEAD_S = 300.0  # a result answered further in the future is refused (clock skew)
DEFAULT_ID = "recorder"


class ResultsListener:
    """Records every result on ``result/+`` in ``store`` (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: StoreUrl | str,
        client_id: str = DEFAULT_ID,
        keep_s: float | None = None,
        connect_patience_s: float | None = 0.0,
        durable: bool = True,
    ) -> None:
        self.settings, self.id = settings, client_id
        self.patience_s = connect_patience_s  # for a broker not up yet (None: forever)
        self.topics = settings.topics
        self.recorder = Recorder(store, keep_s=keep_s)
        expiry = SESSION_EXPIRY_S if durable else None  # durable: the broker keeps its misses
        self.client = MqttClient(settings.connection(client_id), session_expiry_s=expiry)
        self._rejected: Counter[str] = Counter()
        self._heard = 0  # results taken (queued for the store)
        self._lock = threading.Condition()
        self.metrics = RoleMetrics(self._metrics)

    def start(self) -> ResultsListener:
        self.client.connect(patience_s=self.patience_s)
        topic = self.topics.filters().result(ANY)
        self.client.subscribe(topic, self._on_result, qos=1)
        log.info("%s: recording %s in %s", self.id, topic, self.recorder.store.url)
        return self

    def close(self) -> None:
        """Disconnect, then write what is queued and close the store."""
        self.client.close()
        self.recorder.close()

    def __enter__(self) -> ResultsListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> dict[str, int]:
        """The recorder's counts, and ``rejected``: documents that were not results."""
        with self._lock:
            return {**self.recorder.counts(), "rejected": sum(self._rejected.values())}

    def _metrics(self) -> Iterator[Metric]:
        yield counter_family(
            "splitmq_recorder_results",
            "Results heard on result/+, by outcome: recorded, failed (the store refused "
            "them), dropped (its queue was full), rejected (not a valid result)",
            {(outcome,): n for outcome, n in self.counts().items()},
            ("outcome",),
        )

    def wait_heard(self, count: int, timeout: float) -> bool:
        """Whether ``count`` results arrived within ``timeout`` seconds (a caller that
        knows how many were answered waits for them before it closes)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._heard >= count, timeout)

    def _on_result(self, msg: Message) -> None:
        try:
            result = unpack_result(msg.payload, self.settings.max_payload_bytes)
            if msg.topic != self.topics.result(result.device):
                raise WireError(f"the result is for device {result.device!r}")
            ahead = result.t_sent - time.time()
            if ahead > MAX_AHEAD_S:  # it would outlive the retention, which reads t_sent
                raise WireError(f"t_sent: {ahead:.0f} s ahead of this host's clock")
        except WireError as exc:
            with self._lock:
                self._rejected[msg.topic] += 1
            log.warning("%s: not recording a bad result on %s: %s", self.id, msg.topic, exc)
            return
        self.recorder.add(result)
        with self._lock:
            self._heard += 1
            self._lock.notify_all()
