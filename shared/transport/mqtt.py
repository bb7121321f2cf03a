"""The one MQTT client of splitmq: a small wrapper around paho-mqtt 2.x (MQTT v5).

Every role (device, edge, cloud, planner) talks to the broker through
:class:`MqttClient`; nothing else imports paho. What it takes care of, all
measured with mosquitto 2.0.11 (see docs/topics.md and the design notes):

* TCP_NODELAY on the socket (Nagle costs ~88 ms per small request/response);
* payload sizes checked *before* publishing: an over-limit packet makes the
  broker drop the connection and paho resend it forever;
* every subscription restored in ``on_connect`` (the broker restores no shared
  ones); reconnects with backoff, and at start waits for a broker not up yet;
* callbacks' exceptions logged (they would kill paho's thread); backpressure with a
  small Receive Maximum plus manual acks.

Handlers run on paho's network thread and must return quickly: a role queues the
:class:`Message`, its own threads run the inference, then ``message.ack()`` (manual
acks). Never run a model, sleep or wait for a publish inside a handler.

It takes a :class:`~splitmq.shared.connection.Connection`, never the settings. Parts:
``connect`` (login, TLS, CONNECT options), ``lean`` (paho reading PUBLISH and PUBACK
lean), ``waiting`` (for the broker), ``subscriptions``, ``acks``, ``messages``.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from splitmq.shared.connection import BrokerUrl, Connection
from splitmq.shared.errors import BrokerError, LoginRefused
from splitmq.shared.transport.acks import AckListener, PubAcks
from splitmq.shared.transport.connect import connect_properties, new_paho
from splitmq.shared.transport.flapping import Flapping
from splitmq.shared.transport.lean import Incoming
from splitmq.shared.transport.messages import (
    JSON_CONTENT_TYPE,
    Handler,
    Message,
    Once,
    Will,
    check_size,
    from_paho,
    json_payload,
    noop,
    publish_properties,
)
from splitmq.shared.transport.subscriptions import Subscriptions
from splitmq.shared.transport.waiting import waiting

__all__ = ["JSON_CONTENT_TYPE", "Handler", "Message", "MqttClient", "Will"]

log = logging.getLogger(__name__)

#: PUBACK reason codes (MQTT 5): the broker has nobody to deliver the message to; the
#: broker's ACL does not let this user publish there.
NO_SUBSCRIBERS = 16
NOT_AUTHORIZED = 135

_P = ParamSpec("_P")


def _logged(
    method: Callable[Concatenate[MqttClient, _P], None],
) -> Callable[Concatenate[MqttClient, _P], None]:
    """Catch and log everything a paho callback raises: paho would die silently."""

    @functools.wraps(method)
    def wrapper(self: MqttClient, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            log.exception("MQTT callback %s of %s failed", method.__name__, self.client_id)

    return wrapper


class MqttClient:
    """A connected MQTT v5 client; use as a context manager or call connect()/close()."""

    def __init__(
        self,
        connection: Connection,
        *,
        will: Will | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        reconnect_delay: tuple[float, float] = (0.1, 1.0),
        session_expiry_s: int | None = None,
    ) -> None:
        self.connection = connection
        self.client_id = connection.client_id or f"splitmq-{uuid.uuid4().hex[:12]}"
        self._will = will
        self._receive_maximum = receive_maximum
        self._manual_ack = manual_ack
        # A durable session (clean_start=False): the broker keeps what is queued for
        # this client id while it is away, for session_expiry_s.
        self._session_expiry_s = session_expiry_s
        self._connected_at = 0.0  # monotonic, of the latest connection
        self._acks = PubAcks()
        self._state = threading.Condition()
        self._connected = False
        self._refused: str | None = None
        self._broker_max_packet: int | None = None
        self._generation = 0  # bumps per connection; stale acks are dropped
        self._loop_ident: int | None = None
        self._closed = False
        self._paho = new_paho(
            connection,
            self.client_id,
            manual_ack=manual_ack,
            will=will,
            reconnect_delay=reconnect_delay,
        )
        self._flaps = Flapping(self.client_id, reconnect_delay, self._paho.reconnect_delay_set)
        self._paho.on_socket_open = self._on_socket_open
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_publish = self._on_publish
        self._paho.on_message = self._on_message
        self._subs = Subscriptions(self._paho, lambda: self._connected)

    @classmethod
    def at(cls, host: str, port: int, client_id: str | None = None, **kwargs: Any) -> MqttClient:
        """A client for ``host:port``: no login, no TLS, default limits (tests, benchmarks)."""
        return cls(Connection(BrokerUrl(host, port), client_id), **kwargs)

    # -- connection ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def reconnected_within(self, seconds: float) -> bool:
        """Whether this client came back from a lost connection less than ``seconds`` ago:
        after a broker restart, other clients may not have resubscribed yet."""
        return self._generation > 1 and time.monotonic() - self._connected_at < seconds

    @property
    def broker_max_packet(self) -> int | None:
        """Maximum packet size the broker announced in CONNACK (None: no limit)."""
        return self._broker_max_packet

    def connect(self, timeout: float = 10.0, *, patience_s: float | None = 0.0) -> MqttClient:
        """Connect, start the network thread, wait for CONNACK; BrokerError on failure. An
        unreachable broker is retried for ``patience_s`` (None: until it answers; ``waiting``)."""
        if self._generation:  # connected once: paho reconnects by itself, so only wait
            self.wait_connected(timeout)
            return self
        return waiting(lambda: self._connect_once(timeout), self.connection.url, patience_s)

    def _connect_once(self, timeout: float) -> MqttClient:
        url = self.connection.url
        if self._paho.connect_timeout != timeout:  # paho refuses a change after an attempt
            self._paho.connect_timeout = timeout
        props = connect_properties(self._receive_maximum, self._session_expiry_s)
        clean, keepalive = self._session_expiry_s is None, self.connection.keepalive
        try:
            self._paho.connect(url.host, url.port, keepalive, clean_start=clean, properties=props)
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, bad host
            raise BrokerError(f"cannot connect to the MQTT broker at {url}: {exc}") from exc
        self._paho.loop_start()
        try:
            self.wait_connected(timeout)
        except BrokerError:
            self._paho.disconnect()
            self._paho.loop_stop()
            raise
        return self

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until connected; BrokerError on timeout, LoginRefused if the broker refused."""
        with self._state:
            self._state.wait_for(lambda: self._connected or self._refused is not None, timeout)
            if self._connected:
                return
            reason = self._refused
        where = self.connection.url
        if reason is not None:
            raise LoginRefused(f"the MQTT broker at {where} refused {self.client_id}: {reason}")
        raise BrokerError(f"not connected to the MQTT broker at {where} within {timeout:g} s")

    def close(self, timeout: float = 5.0) -> None:
        """Publish the offline status (when a will is set), disconnect, stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._will is not None and self._connected:
                will = self._will
                self.publish_json(will.topic, will.payload, will.qos, will.retain, wait=timeout)
        except BrokerError as exc:
            log.warning("%s could not publish its offline status: %s", self.client_id, exc)
        finally:
            self._paho.disconnect()
            self._paho.loop_stop()

    def __enter__(self) -> MqttClient:
        return self if self._connected else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- subscriptions --------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: Handler,
        qos: int = 1,
        timeout: float = 10.0,
        *,
        no_local: bool = False,
    ) -> None:
        """Route messages matching ``topic_filter`` to ``handler``; waits for the SUBACK.

        The subscription is remembered and restored after every reconnect.
        Subscribing to the same filter again replaces its handler. Called from
        a handler (the network thread), it does not wait; a refusal is logged.
        ``no_local``: the broker does not send this client what it published itself.
        """
        waits = threading.get_ident() != self._loop_ident
        sent = self._subs.add(topic_filter, handler, qos, wait=waits, no_local=no_local)
        if sent is not None:
            self._subs.await_suback(sent, timeout)

    def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.remove(topic_filter) and self._connected:
            self._paho.unsubscribe(topic_filter)

    # -- publishing -------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str,
        qos: int = 1,
        retain: bool = False,
        *,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        content_type: str | None = None,
        expiry_s: float | None = None,
        json: bool = False,
        wait: float | None = None,
        on_ack: AckListener | None = None,
    ) -> None:
        """Publish one message; PayloadTooLarge before anything is sent if it is too big.

        ``json=True`` marks the payload as UTF-8 (payload format indicator 1)
        with content type ``application/json``. ``wait`` (seconds) blocks until
        the broker acknowledged a QoS 1 message; BrokerError on timeout or refusal.
        While disconnected, QoS 1 messages are queued and sent after the
        reconnect (with ``wait``, BrokerError says so at once); QoS 0 is dropped.
        Never ``wait`` inside a handler: it runs on the network thread.
        ``on_ack(code, reason)`` hears the broker's PUBACK of a QoS 1 message, on the
        network thread: code 16 (no matching subscribers) says nobody will get it.
        """
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        props = publish_properties(correlation_data, response_topic, content_type, expiry_s, json)
        check_size(
            topic, data, props, qos, self.connection.max_payload_bytes, self._broker_max_packet
        )
        try:
            info = self._paho.publish(topic, data, qos, retain, properties=props)
        except ValueError as exc:  # wildcards in the topic, bad QoS
            raise BrokerError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            log.debug(
                "%s: not connected, %s to %s", self.client_id, "queued" if qos else "dropped", topic
            )
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        if on_ack is not None and qos > 0:
            self._acks.listen(info.mid, on_ack)
        if wait is not None:
            self._await_publish(topic, info, wait)

    def publish_json(
        self, topic: str, obj: Any, qos: int = 1, retain: bool = False, **kwargs: Any
    ) -> None:
        """Publish ``obj`` as compact JSON (strict: NaN is refused, other languages read it)."""
        payload, _ = json_payload(topic, obj, PacketTypes.PUBLISH)
        self.publish(topic, payload, qos, retain, json=True, **kwargs)

    def _await_publish(self, topic: str, info: paho.MQTTMessageInfo, timeout: float) -> None:
        self._refuse_wait_on_network_thread(f"wait for the publish to {topic!r}")
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publish to {topic!r} failed: {exc}") from exc
        if not info.is_published():
            raise BrokerError(f"publish to {topic!r} not acknowledged within {timeout:g} s")
        failure = self._acks.refusal(info.mid)
        if failure is not None:
            raise BrokerError(f"the broker rejected the publish to {topic!r}: {failure}")

    def _refuse_wait_on_network_thread(self, what: str) -> None:
        if threading.get_ident() == self._loop_ident:
            raise BrokerError(
                f"cannot {what} on the MQTT network thread (it would deadlock): "
                "hand the work to your own worker pool"
            )

    # -- paho callbacks (network thread) ----------------------------------------

    @_logged
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:  # e.g. a websocket wrapper
            log.warning("%s: cannot set TCP_NODELAY: %s", self.client_id, exc)

    @_logged
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("%s: the broker refused the connection: %s", self.client_id, reason)
            with self._state:
                self._refused = str(reason)
                self._state.notify_all()
            return
        self._loop_ident = threading.get_ident()
        self._broker_max_packet = getattr(props, "MaximumPacketSize", None)
        self._generation += 1
        self._connected_at = time.monotonic()
        self._subs.resend()
        with self._state:
            self._connected, self._refused = True, None
            self._state.notify_all()
        log.info("%s connected to %s", self.client_id, self.connection.url)

    @_logged
    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._state:
            self._connected = False
        self._subs.release_waiters()  # waiters return; on_connect restores their subscriptions
        if self._closed:
            log.debug("%s disconnected", self.client_id)
        else:
            log.log(*self._flaps.lost(time.monotonic() - self._connected_at, reason))

    @_logged
    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        if self._subs.subacked(mid, codes):
            return
        for code in codes:  # a resubscription from on_connect: nobody waits for it
            if code.is_failure:
                log.error("%s: the broker refused a resubscription: %s", self.client_id, code)

    @_logged
    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: the broker rejected message %d: %s", self.client_id, mid, reason)
        self._acks.heard(mid, reason)

    @_logged
    def _on_message(self, client: paho.Client, userdata: Any, msg: Incoming) -> None:
        message = self._to_message(msg)
        sub_ids = getattr(msg.properties, "SubscriptionIdentifier", None)
        subs = self._subs.route(message.topic, sub_ids)
        if not subs:
            log.debug("%s: no handler for %s", self.client_id, message.topic)
            message.ack()
        for sub in subs:
            try:
                sub.handler(message)
            except Exception:
                log.exception("handler for %r failed on %s", sub.topic_filter, message.topic)
                message.ack()  # the handler did not take it: don't block the flow forever

    def _to_message(self, msg: Incoming) -> Message:
        if self._manual_ack and msg.qos > 0:
            return from_paho(
                msg, functools.partial(self._ack, Once(), msg.mid, msg.qos, self._generation)
            )
        return from_paho(msg, noop)

    def _ack(self, once: Once, mid: int, qos: int, generation: int) -> None:
        # A mid from an earlier connection may already name another message.
        if once.take() and generation == self._generation and self._connected:
            self._paho.ack(mid, qos)
