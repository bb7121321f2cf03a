"""Publishing a device's requests, and what the broker's acknowledgement says.

Each attempt crosses the device's uplink (``Conditions.uplink``) and goes out
QoS 1 with the request id as correlation data, the result topic as response
topic and an expiry. The PUBACK's reason code is the broker's word on it:
"no matching subscribers" means the tier is gone (unless the device just
reconnected and workers may not have resubscribed yet), "not authorized"
means this device's user may not write there. Either ends the request at
once, visibly, instead of waiting out its timeouts. Any other PUBACK says
the request's bytes crossed the uplink: when it came (through the emulated
downlink, like a probe's) is the link estimator's request sample, timed on
the device's own clock, retries included (``LinkEstimator.acknowledged``).

What the device answered itself goes out the same way, as the result document
on its own ``result/<device>`` (``tier: "device"``), so subscribers and the
results store see every answer whichever tier computed it. It is never waited
for; while the broker is away such results queue (QoS 1, sent after the
reconnect) up to ``LOCAL_BACKLOG``, and past that they are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from splitmq.device.answers import InferenceFailed
from splitmq.device.conditions import Conditions
from splitmq.device.flights import Flight
from splitmq.shared.errors import SplitMQError
from splitmq.shared.protocol.results import Result, pack_result
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.protocol.wire import CONTENT_TYPE_REQUEST, expiry_interval, pack_request
from splitmq.shared.transport.estimates import LinkEstimator
from splitmq.shared.transport.mqtt import NO_SUBSCRIBERS, NOT_AUTHORIZED, MqttClient

log = logging.getLogger(__name__)

#: After a reconnect (a broker restart), workers may resubscribe after the device
#: does: "no subscribers" then means "not yet", and the attempt's timeout resends it.
RESUBSCRIBE_GRACE_S = 5.0
#: The device's own results unacknowledged at most (queued while offline): a day of
#: frames must not pile up in memory; past it, results are dropped and counted.
LOCAL_BACKLOG = 1000


@dataclass
class Sender:
    """Publishes the attempts of device ``device_id``'s flights (see module docstring)."""

    device_id: str
    topics: Topics
    client: MqttClient
    conditions: Conditions
    fail: Callable[[str, InferenceFailed], None]  # end a request visibly
    unreachable: Callable[[str], None]  # a tier has no worker
    sent_bytes: Callable[[int], None]
    estimates: LinkEstimator
    link_sampled: Callable[[], None]  # the link estimate may have moved
    refused_results: int = 0  # its own results the broker's ACL refused
    _waiting: int = 0  # own results not yet acknowledged by the broker
    _acked: threading.Condition = field(default_factory=threading.Condition)

    def answered(self, result: Result) -> bool:
        """Publish a result the device computed; False: ``LOCAL_BACKLOG`` are waiting for
        the broker, and this one is dropped."""
        with self._acked:
            if self._waiting >= LOCAL_BACKLOG:
                return False
            self._waiting += 1
        payload = pack_result(result)
        self.sent_bytes(len(payload))

        def acked(code: int, why: str) -> None:
            with self._acked:
                self._waiting -= 1
                self._acked.notify_all()
            if code == NOT_AUTHORIZED:  # a secure setup made before devices published
                with self._acked:
                    self.refused_results += 1
                    first = self.refused_results == 1
                if first:
                    log.warning(
                        "%s: the broker's ACL refuses its own results on %s (%s): run "
                        "`splitmq secure upgrade` on the secure directory",
                        self.device_id,
                        self.topics.result(self.device_id),
                        why,
                    )

        def send() -> None:
            try:
                self.client.publish(
                    self.topics.result(self.device_id),
                    payload,
                    qos=1,
                    correlation_data=result.id.encode(),
                    json=True,
                    on_ack=acked,
                )
            except SplitMQError as exc:
                acked(0, str(exc))
                log.warning("%s: cannot publish its answer %s: %s", self.device_id, result.id, exc)

        self.conditions.uplink(len(payload), send)
        return True

    def flush(self, timeout: float) -> int:
        """Wait until the broker has every result the device published (at most
        ``timeout`` seconds); how many it still lacks."""
        with self._acked:
            self._acked.wait_for(lambda: self._waiting == 0, timeout)
            return self._waiting

    def publish(self, flight: Flight) -> None:
        """Send ``flight``'s request (again, on a retry)."""
        request = flight.request
        hop = request.route[0]
        payload = pack_request(request)
        flight.sizes.append(len(payload))
        self.sent_bytes(len(payload))
        topic = self.topics.request(hop.tier, request.model, request.cut, self.device_id)
        client, size, t_sent = self.client, len(payload), time.monotonic()

        def crossed() -> None:
            self.estimates.acknowledged(t_sent, time.monotonic(), size)
            self.link_sampled()

        def acked(code: int, why: str) -> None:  # PUBACK, on the network thread
            flight.delivered = code < 0x80  # reason 16 too: the broker has the bytes
            if flight.delivered:
                self.conditions.downlink(8, crossed)
            if code == NO_SUBSCRIBERS and client.reconnected_within(RESUBSCRIBE_GRACE_S):
                log.info("no %s worker subscribed yet after a reconnect; will resend", hop.tier)
            elif code == NO_SUBSCRIBERS:
                message = f"no {hop.tier} worker is subscribed ({why})"
                self.fail(request.id, InferenceFailed(request.id, "no_worker", message))
                self.unreachable(hop.tier)
            elif code == NOT_AUTHORIZED:  # this device's user may not write there: no retry
                message = f"the broker's ACL refuses {self.device_id} on {topic} ({why})"
                self.fail(request.id, InferenceFailed(request.id, "not_authorized", message))

        def send() -> None:
            try:
                client.publish(
                    topic,
                    payload,
                    qos=1,
                    correlation_data=request.id.encode(),
                    response_topic=self.topics.result(self.device_id),
                    content_type=CONTENT_TYPE_REQUEST,
                    expiry_s=expiry_interval(request.deadline, time.time()),
                    on_ack=acked,
                )
            except SplitMQError as exc:
                self.fail(request.id, InferenceFailed(request.id, "not_sent", str(exc)))

        self.conditions.uplink(len(payload), send)
